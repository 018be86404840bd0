"""Photo preparation: turn someone's photo library into a DreamBooth dataset of their face.

`prepare_photos(PrepConfig(...))` writes DATASET/images/NNNN.png, manifest.json, identity.json
and report.png. `load_identity(DATASET)` and `score_image(identity, image)` measure how much any
picture looks like that person. face_recognition (dlib) loads on first use, not on import.

The bottom stage beside ``engine.models``: imports only the shared pieces.
"""

from engine.prep.config import PrepConfig
from engine.prep.identity import Identity, load_identity, score_image
from engine.prep.manifest import Manifest, PhotoEntry, PrepProgress, PrepReport, Reason
from engine.prep.pipeline import is_prepared_dataset, prepare_photos

__all__ = [
    "Identity",
    "Manifest",
    "PhotoEntry",
    "PrepConfig",
    "PrepProgress",
    "PrepReport",
    "Reason",
    "is_prepared_dataset",
    "load_identity",
    "prepare_photos",
    "score_image",
]
