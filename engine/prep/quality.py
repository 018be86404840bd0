"""Is the face sharp and well exposed, and is the photo a near-duplicate of another?"""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.prep.manifest import Box

# Sharpness is measured on the face resized to this many pixels, so one threshold fits a face
# of any size in a photo of any resolution.
SHARPNESS_SIDE = 128


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: high for crisp edges, low for blur."""
    g = gray.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def face_sharpness(image: Image.Image, box: Box) -> float:
    """Laplacian variance of the face box, resized to a fixed size."""
    face = image.crop(box).convert("L").resize((SHARPNESS_SIDE, SHARPNESS_SIDE), Image.Resampling.BILINEAR)
    return laplacian_variance(np.asarray(face))


def face_brightness(image: Image.Image, box: Box) -> float:
    """Mean luminance (0-255) of the face box."""
    return float(np.asarray(image.crop(box).convert("L"), dtype=np.float32).mean())


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits."""
    import imagehash

    return str(imagehash.phash(image))


def near_duplicates(hashes: list[str], max_distance: int) -> dict[int, int]:
    """Which photos are near-duplicates of a better one: {index: index of the photo kept instead}.

    `hashes` come best first (the caller's order, e.g. sharpest first). Each photo is a duplicate
    of the nearest photo kept before it, if that is within `max_distance` bits; else it is kept.
    Not chained: in a library of one person's portraits, chains of similar photos would join
    hundreds of different ones.
    """
    if len(hashes) < 2 or max_distance < 0:
        return {}
    bits = np.array([[c == "1" for c in bin(int(h, 16))[2:].zfill(64)] for h in hashes], dtype=bool)
    kept: list[int] = []
    duplicates: dict[int, int] = {}
    for i in range(len(hashes)):
        if kept:
            distance = np.count_nonzero(bits[kept] != bits[i], axis=1)
            nearest = int(distance.argmin())
            if distance[nearest] <= max_distance:
                duplicates[i] = kept[nearest]
                continue
        kept.append(i)
    return duplicates
