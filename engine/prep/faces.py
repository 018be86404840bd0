"""Finding faces and their 128-d encodings with face_recognition (dlib), imported on first use."""

from __future__ import annotations

import warnings
from functools import cache
from types import ModuleType

import numpy as np
from PIL import Image

from engine.prep.manifest import Box

# dlib's HOG detector sees faces from about 80 px wide; a copy at most this many times smaller
# than the detection size is searched once more at double size so small photos still work.
SMALL_IMAGE_UPSAMPLE_BELOW = 0.5


def _face_recognition() -> ModuleType:
    from PIL import ImageFile

    # face_recognition_models still imports pkg_resources, which warns on every import; and
    # face_recognition turns on Pillow's LOAD_TRUNCATED_IMAGES for the whole process, which
    # would let truncated photos through as grey-bottomed images. Put it back.
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
        import face_recognition
    ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    return face_recognition


@cache
def resolve_detector(detector: str) -> str:
    """"hog" or "cnn": auto takes the CNN only where dlib was built with CUDA."""
    if detector != "auto":
        return detector
    import dlib

    return "cnn" if getattr(dlib, "DLIB_USE_CUDA", False) else "hog"


def detection_copy(image: Image.Image, detect_size: int) -> Image.Image:
    """`image` shrunk so its long side is at most `detect_size` (never enlarged)."""
    long_side = max(image.size)
    if long_side <= detect_size:
        return image
    factor = detect_size / long_side
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def find_faces(image: Image.Image, *, detect_size: int, detector: str) -> list[Box]:
    """Face boxes (left, top, right, bottom) in `image`'s pixels, largest first."""
    face_recognition = _face_recognition()
    upsample = 1 if max(image.size) <= detect_size * SMALL_IMAGE_UPSAMPLE_BELOW else 0
    pixels = np.asarray(image)
    locations = face_recognition.face_locations(
        pixels, number_of_times_to_upsample=upsample, model=resolve_detector(detector)
    )
    boxes = [(left, top, right, bottom) for top, right, bottom, left in locations]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def encode_faces(image: Image.Image, boxes: list[Box]) -> list[np.ndarray]:
    """The 128-d encoding of each face box in `image`; 0.6 apart is the usual same-person limit.

    As face_recognition.face_encodings(model="small", num_jitters=1) computes it: dlib's 5-point
    landmarks and aligned 150 px chips, then dlib's network, run by torch (engine.prep.face_encoder).
    """
    if not boxes:
        return []
    import dlib

    from engine.prep.face_encoder import CHIP_PADDING, CHIP_SIZE, face_encoder

    models = _face_recognition().api.face_recognition_models
    pixels = np.asarray(image)
    predictor = _five_point_landmarks(models.pose_predictor_five_point_model_location())
    shapes = dlib.full_object_detections()
    for left, top, right, bottom in boxes:
        shapes.append(predictor(pixels, dlib.rectangle(left, top, right, bottom)))
    chips = dlib.get_face_chips(pixels, shapes, size=CHIP_SIZE, padding=CHIP_PADDING)
    return list(face_encoder(models.face_recognition_model_location())(np.stack(chips)))


@cache
def _five_point_landmarks(model_path: str):
    import dlib

    return dlib.shape_predictor(model_path)
