"""Likeness as a number: each generated face's distance to the dataset's identity.

The identity (the centroid of the person's face encodings) is written by prep; scoring needs
face_recognition, which loads at the first score, not at import.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def identity_for_dataset(dataset: Path | None):
    """The dataset's identity, or None where the images were not prepared (nothing to compare with)."""
    from engine.prep import is_prepared_dataset, load_identity

    if dataset is None or not is_prepared_dataset(dataset):
        return None
    return load_identity(dataset)


def score_images(identity, images: list[Image.Image]) -> list[float | None]:
    """Distance of each image's best face to the identity (0 = same face); None = no face or no identity."""
    if identity is None:
        return [None] * len(images)
    from engine.prep import score_image

    return [score_image(identity, image) for image in images]


def mean_score(scores: list[float | None]) -> float | None:
    found = [s for s in scores if s is not None]
    return round(sum(found) / len(found), 4) if found else None


def score_label(score: float | None) -> str:
    return "no face" if score is None else f"face dist {score:.2f}"
