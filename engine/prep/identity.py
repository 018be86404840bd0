"""Whose dataset this is: the identity's centroid encoding, how it is chosen, and likeness scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from engine.errors import LikenessError
from engine.prep.faces import detection_copy, encode_faces, find_faces
from engine.prep.loading import to_rgb8

IDENTITY_FILE = "identity.json"

# Faces of one person are usually within 0.6 of each other (face_recognition's tolerance); the
# tighter limit used while clustering keeps a look-alike from joining and dragging the centroid.
CLUSTER_DISTANCE = 0.5


class Identity(BaseModel):
    """DATASET/identity.json: the mean face encoding of the person the dataset is about."""

    centroid: list[float] = Field(description="Mean 128-d encoding of the identity's faces.")
    tolerance: float = Field(description="Distance beyond which a face was judged a different person.")
    photos: int = Field(description="Photos whose faces formed the centroid.")
    source: Literal["cluster", "reference"] = Field(description="Most-photographed guess, or a reference.")
    detect_size: int = Field(default=1280, description="Detection copy size used when scoring images.")

    def distances(self, encodings: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """Euclidean distance of each encoding to the centroid (0 = the same face)."""
        encodings = np.asarray(encodings, dtype=np.float64).reshape(-1, 128)
        return np.linalg.norm(encodings - np.asarray(self.centroid), axis=1)


def cluster_identity(photo_faces: list[list[np.ndarray]]) -> tuple[np.ndarray, int] | None:
    """The centroid of the person in the most photos, and in how many photos they are.

    `photo_faces` holds each photo's face encodings. The seed is the face with close matches in
    the most other photos (ties: the tightest match); the identity is each photo's face nearest
    the seed, then nearest the centroid, within `CLUSTER_DISTANCE`. Deterministic, and a person
    appears at most once per photo, which is what makes "most photos" the right count.
    """
    encodings = [e for faces in photo_faces for e in faces]
    if not encodings:
        return None
    owner = np.array([p for p, faces in enumerate(photo_faces) for _ in faces])
    matrix = np.asarray(encodings, dtype=np.float32)
    best_score: tuple[int, float] | None = None
    seed = 0
    # Row blocks keep memory flat for libraries of tens of thousands of faces.
    for start in range(0, len(matrix), 1024):
        block = matrix[start : start + 1024]
        d = np.linalg.norm(block[:, None, :] - matrix[None, :, :], axis=2)
        close = (d < CLUSTER_DISTANCE) & (owner[None, :] != owner[start : start + len(block), None])
        for row in range(len(block)):
            photos = len(set(owner[close[row]].tolist()))
            spread = float(d[row][close[row]].mean()) if photos else 0.0
            score = (photos, -spread)
            if best_score is None or score > best_score:
                best_score, seed = score, start + row
    centre = matrix[seed].astype(np.float64)
    members: list[np.ndarray] = []
    for _ in range(3):
        members = _nearest_per_photo(photo_faces, centre, CLUSTER_DISTANCE)
        centre = np.mean(members, axis=0)
    return centre, len(members)


def _nearest_per_photo(photo_faces: list[list[np.ndarray]], centre: np.ndarray, limit: float) -> list[np.ndarray]:
    members = []
    for faces in photo_faces:
        if faces:
            d = np.linalg.norm(np.asarray(faces) - centre, axis=1)
            if d.min() < limit:
                members.append(np.asarray(faces[int(d.argmin())]))
    return members or [centre]


def reference_identity(images: list[Image.Image], detect_size: int, detector: str) -> tuple[np.ndarray, int]:
    """The centroid of the largest face in each reference image."""
    encodings = []
    for image in images:
        copy = detection_copy(to_rgb8(image), detect_size)
        boxes = find_faces(copy, detect_size=detect_size, detector=detector)
        if boxes:
            encodings.append(encode_faces(copy, boxes[:1])[0])
    if not encodings:
        raise LikenessError("no face found in the reference photo(s)")
    return np.mean(encodings, axis=0), len(encodings)


def save_identity(identity: Identity, dataset_dir: Path) -> None:
    """Write DATASET/identity.json."""
    (dataset_dir / IDENTITY_FILE).write_text(json.dumps(identity.model_dump(mode="json")) + "\n")


def load_identity(dataset_dir: Path | str) -> Identity:
    """Read the identity of a prepared dataset."""
    path = Path(dataset_dir) / IDENTITY_FILE
    if not path.is_file():
        raise LikenessError(f"{dataset_dir} is not a prepared dataset (no {IDENTITY_FILE}); run `likeness prep`")
    return Identity.model_validate_json(path.read_text())


def score_image(identity: Identity, image: Image.Image, detector: str = "hog") -> float | None:
    """How far the image's best-matching face is from the identity: 0 is the same face, below
    about 0.6 the same person; None when the image shows no face."""
    best = best_face(identity, image, detector)
    return None if best is None else best[0]


def best_face(identity: Identity, image: Image.Image, detector: str = "hog") -> tuple[float, np.ndarray] | None:
    """The image's face nearest the identity: (its distance, its 128-d encoding); None when no face."""
    copy = detection_copy(to_rgb8(image), identity.detect_size)
    boxes = find_faces(copy, detect_size=identity.detect_size, detector=detector)
    if not boxes:
        return None
    encodings = encode_faces(copy, boxes)
    distances = identity.distances(encodings)
    nearest = int(distances.argmin())
    return float(distances[nearest]), np.asarray(encodings[nearest], dtype=np.float64)
