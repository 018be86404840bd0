"""What one sample grid says about a run: likeness, memorisation and variety.

- **likeness**: the median distance of the grid's faces to the person (0 = the same face, under
  about 0.6 the same person; face_recognition's scale). The median, so one odd picture does not
  move the curve. None when no picture shows a face.
- **memorisation**: how close each picture is to its nearest training photo, from 0 (nothing
  like any of them) to 1 (the photo itself), taking the closer of two views: its face against
  the training photos' faces (face encodings), and the whole picture against the whole photos
  (perceptual hash). The grid's value is the mean. A picture that merely reproduces a training
  photo scores as a copy here, however good its likeness.
- **variety**: the median face distance between the grid's faces, across seeds and prompts
  (0 = every picture the same face). None with fewer than two faces.

The face encodings and the identity come from prep (engine.prep); imagehash is prep's too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from PIL import Image

# How a distance becomes closeness to a training photo (1 = a copy, 0 = unrelated). Measured on
# scikit-image's astronaut: crops, flips and colour changes of one photo are 0.06-0.19 apart by
# face; different people 0.5-0.9; different photos of one person usually 0.3-0.45.
FACE_COPY_DISTANCE = 0.1  # a face this close to a training face is that photo's face: closeness 1
FACE_UNRELATED_DISTANCE = 0.5  # this far or farther: closeness 0 (no more like the photo than another shot)
# Perceptual hash (64 bits): the same photo recoloured or slightly rotated is 0-12 bits away,
# unrelated pictures (and noise) 24-36.
HASH_COPY_BITS = 4
HASH_UNRELATED_BITS = 24


def _closeness(distance: float, copy: float, unrelated: float) -> float:
    return float(np.clip((unrelated - distance) / (unrelated - copy), 0.0, 1.0))


@dataclass(frozen=True)
class TrainingPhotos:
    """The training images as memorisation compares with them: a face encoding and a hash each."""

    names: list[str]
    encodings: list[np.ndarray | None]  # the face nearest the identity; None: no face, or no identity
    hashes: list[Any]  # imagehash.ImageHash

    @classmethod
    def from_images(cls, names: list[str], images: list[Image.Image], identity) -> TrainingPhotos:
        import imagehash

        from engine.prep.identity import best_face

        encodings = []
        for image in images:
            found = best_face(identity, image) if identity is not None else None
            encodings.append(None if found is None else found[1])
        return cls(names, encodings, [imagehash.phash(image.convert("RGB")) for image in images])

    @classmethod
    def from_training_images(cls, images: list, identity) -> TrainingPhotos:
        """From the trainer's images (engine.training.images.TrainingImage): the photos exactly as trained on."""
        pictures = []
        for image in images:
            pixels = ((image.pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255)
            pictures.append(Image.fromarray(pixels.astype(np.uint8)))
        return cls.from_images([image.path.name for image in images], pictures, identity)


@dataclass(frozen=True)
class PictureMeasure:
    """One sample picture: its likeness and its nearest training photo."""

    face_distance: float | None  # to the person; None = no face (or no identity)
    nearest_photo: str | None  # the training photo it is closest to
    photo_face_distance: float | None  # its face to that photo's face
    photo_hash_bits: int | None  # its perceptual hash to that photo's
    memorisation: float  # 0..1, 1 = that photo itself

    def to_json(self) -> dict[str, Any]:
        return {"face_distance": _round(self.face_distance), "nearest_photo": self.nearest_photo,
                "photo_face_distance": _round(self.photo_face_distance), "photo_hash_bits": self.photo_hash_bits,
                "memorisation": _round(self.memorisation)}


@dataclass(frozen=True)
class GridMeasures:
    """The grid's likeness, memorisation and variety, and each picture's part in them."""

    likeness: float | None
    memorisation: float | None  # None only for a grid compared with no training photo
    variety: float | None
    faces_found: int | None  # None: the dataset has no identity, so faces were not looked for
    pictures: list[list[PictureMeasure]] = field(default_factory=list)  # rows x columns, as the grid

    def metrics(self) -> dict[str, Any]:
        """The fields metrics.jsonl and the grid's JSON carry."""
        return {"likeness": _round(self.likeness), "memorisation": _round(self.memorisation),
                "variety": _round(self.variety), "faces_found": self.faces_found,
                "pictures": sum(len(row) for row in self.pictures)}


def measure_picture(identity, photos: TrainingPhotos, image: Image.Image) -> tuple[PictureMeasure, np.ndarray | None]:
    """A picture's measure, and its face encoding (for variety)."""
    import imagehash

    from engine.prep.identity import best_face

    found = best_face(identity, image) if identity is not None else None
    encoding = None if found is None else found[1]
    image_hash = imagehash.phash(image.convert("RGB"))
    best: tuple[float, str | None, float | None, int | None] = (0.0, None, None, None)
    for name, photo_encoding, photo_hash in zip(photos.names, photos.encodings, photos.hashes, strict=True):
        bits = int(image_hash - photo_hash)
        face = (float(np.linalg.norm(encoding - photo_encoding))
                if encoding is not None and photo_encoding is not None else None)
        score = max(_closeness(bits, HASH_COPY_BITS, HASH_UNRELATED_BITS),
                    _closeness(face, FACE_COPY_DISTANCE, FACE_UNRELATED_DISTANCE) if face is not None else 0.0)
        if best[1] is None or score > best[0]:
            best = (score, name, face, bits)
    score, name, face, bits = best
    return PictureMeasure(None if found is None else found[0], name, face, bits, score), encoding


def measure_grid(identity, photos: TrainingPhotos, rows: list[list[Image.Image]]) -> GridMeasures:
    """Likeness, memorisation and variety of a grid of pictures (rows of columns)."""
    pictures, encodings = [], []
    for row in rows:
        measured = [measure_picture(identity, photos, image) for image in row]
        pictures.append([m for m, _ in measured])
        encodings += [e for _, e in measured if e is not None]
    flat = [p for row in pictures for p in row]
    distances = [p.face_distance for p in flat if p.face_distance is not None]
    pairwise = [float(np.linalg.norm(a - b)) for a, b in combinations(encodings, 2)]
    return GridMeasures(
        likeness=float(np.median(distances)) if distances else None,
        memorisation=float(np.mean([p.memorisation for p in flat])) if flat and photos.names else None,
        variety=float(np.median(pairwise)) if pairwise else None,
        faces_found=len(distances) if identity is not None else None,
        pictures=pictures,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
