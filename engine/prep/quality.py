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


def near_duplicate_groups(hashes: list[str], max_distance: int) -> list[list[int]]:
    """Indices of `hashes` grouped so each group's members chain within `max_distance` bits.

    Only groups of two or more come back. Chaining (not all-pairs) is what a burst looks like:
    each frame close to the next.
    """
    n = len(hashes)
    if n < 2 or max_distance < 0:
        return []
    bits = np.array([[c == "1" for c in bin(int(h, 16))[2:].zfill(64)] for h in hashes], dtype=np.float32)
    # Hamming distance for all pairs at once: positions set in one and not in the other.
    distance = bits @ (1.0 - bits).T
    distance = distance + distance.T
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distance <= max_distance, k=1)), strict=True):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]
