"""Opening any photo format as an upright 8-bit RGB image, decoding no more pixels than needed."""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.prep.manifest import Reason
from engine.prep.sources import SourceRejected

# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112

_heif_registered = False


def _register_heif() -> None:
    # Registered on first use so that importing the engine does not load libheif.
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif_registered = True


@dataclass
class DecodedPhoto:
    """An upright 8-bit RGB copy of a photo and how it relates to the full-resolution original."""

    image: Image.Image
    full_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Pixels of `image` per full-resolution pixel."""
        return self.image.width / self.full_size[0]


def decode_photo(data: bytes, *, max_pixels: int, min_long_side: int | None = None) -> DecodedPhoto:
    """Decode `data` upright and as 8-bit RGB.

    With `min_long_side`, JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) whose long side
    is still at least that big: several times faster than a full decode of a phone photo.
    Any failure is a `SourceRejected` carrying the manifest's reason.
    """
    _register_heif()
    # Pillow's own bomb limit (89.5 MP by default, warning at 1x and error at 2x) would refuse photos
    # under our max_pixels; ours is the limit, checked below from the header. Pillow warns from it on,
    # and that warning is made an error: a frame or layer larger than the header said stays bounded.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise SourceRejected(Reason.TOO_MANY_PIXELS, f"{width}x{height} is over {max_pixels} pixels")
            orientation = _orientation(image)
            if min_long_side is not None and image.format in ("JPEG", "MPO"):
                factor = min(1.0, min_long_side / max(width, height))
                image.draft(image.mode, (math.ceil(width * factor), math.ceil(height * factor)))
            image.seek(0)  # GIF, MPO, multi-page TIFF: the first frame.
            image.load()
            image = to_rgb8(image)
    except SourceRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SourceRejected(Reason.TOO_MANY_PIXELS, str(error)) from error
    except UnidentifiedImageError as error:
        raise SourceRejected(Reason.NOT_AN_IMAGE, "not a format Pillow or pillow-heif can read") from error
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as error:
        raise SourceRejected(Reason.CORRUPT, f"{type(error).__name__}: {error}") from error
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedPhoto(image=image, full_size=(width, height))


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:
        # A mangled EXIF block should not cost the photo; treat it as upright.
        return 1


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and float scaled down, alpha laid on white, CMYK/palette converted."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float32)
        if mode.startswith("I;16") or (mode == "I" and values.max() > 255):
            values = values / 257.0
        elif mode == "F" and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")
