"""Demo photos of one person, made from one public-domain portrait.

They come from scikit-image's bundled astronaut portrait (public domain, NASA): crops, flips
and colour changes stand in for a person's photo library. The tiny model has random weights,
so the demo's pictures are noise; what it shows is every stage working end to end.
"""

from __future__ import annotations

from pathlib import Path


def make_demo_photos(folder: Path, count: int = 8, seed: int = 0) -> list[Path]:
    """Write ``count`` varied photos of the astronaut's face into ``folder``."""
    import numpy as np
    from PIL import Image, ImageEnhance
    from skimage import data

    rng = np.random.default_rng(seed)
    portrait = Image.fromarray(data.astronaut())  # 512 x 512
    face_left, face_top, face_right, face_bottom = 170, 30, 320, 200  # the face, with some margin
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        # Every crop keeps the whole face, placed differently in each, as in real photos of a person.
        size = int(rng.integers(260, 420))
        left = int(rng.integers(max(0, face_right - size), min(face_left, 512 - size) + 1))
        top = int(rng.integers(max(0, face_bottom - size), min(face_top, 512 - size) + 1))
        photo = portrait.crop((left, top, left + size, top + size))
        if index % 2:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        photo = ImageEnhance.Color(photo).enhance(float(rng.uniform(0.6, 1.4)))
        photo = ImageEnhance.Brightness(photo).enhance(float(rng.uniform(0.8, 1.2)))
        path = folder / f"astronaut-{index:02d}.jpg"
        photo.save(path, quality=92)
        paths.append(path)
    return paths
