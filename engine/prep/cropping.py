"""The square crop around the kept face, padded where it overhangs, resized to the training size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.prep.manifest import Box

# A crop that overhangs the photo first slides back inside by up to this fraction of its side
# (the face moves a little off-centre); what still overhangs is padded.
MAX_SLIDE = 0.1


def face_crop_box(face: Box, photo_size: tuple[int, int], face_fraction: float, vertical_offset: float) -> Box:
    """Square crop in which the face is `face_fraction` of the width, centred on the face shifted
    by `vertical_offset` face heights. May extend past the photo's edges."""
    left, top, right, bottom = face
    face_w, face_h = right - left, bottom - top
    side = max(1, round(face_w / face_fraction))
    cx = (left + right) / 2
    cy = (top + bottom) / 2 + vertical_offset * face_h
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x0 += _slide(x0, side, photo_size[0])
    y0 += _slide(y0, side, photo_size[1])
    return (x0, y0, x0 + side, y0 + side)


def _slide(start: int, side: int, limit: int) -> int:
    room = MAX_SLIDE * side
    if start < 0 and start + side <= limit:
        return round(min(-start, room, limit - (start + side)))
    if start + side > limit and start >= 0:
        return -round(min(start + side - limit, room, start))
    return 0


def upscale_needed(box: Box, size: int) -> float:
    """How much the crop must be enlarged to reach the training size."""
    return size / (box[2] - box[0])


def render_crop(image: Image.Image, box: Box, size: int) -> Image.Image:
    """Cut `box` (in `image`'s pixels) out of `image`, replicating edge pixels where it overhangs,
    and resize it to `size` with Lanczos."""
    left, top, right, bottom = box
    inside = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
    if inside[0] >= inside[2] or inside[1] >= inside[3]:
        raise ValueError(f"crop {box} misses the {image.size} image")
    piece = image.crop(inside)
    pads = (inside[1] - top, bottom - inside[3], inside[0] - left, right - inside[2])
    if any(pads):
        pixels = np.pad(np.asarray(piece), ((pads[0], pads[1]), (pads[2], pads[3]), (0, 0)), mode="edge")
        piece = Image.fromarray(pixels)
    return piece.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def scale_box(box: Box, scale: float) -> Box:
    """`box` in the pixels of a copy `scale` times the size, still square if it was."""
    x0, y0 = round(box[0] * scale), round(box[1] * scale)
    return (x0, y0, x0 + max(1, round((box[2] - box[0]) * scale)), y0 + max(1, round((box[3] - box[1]) * scale)))
