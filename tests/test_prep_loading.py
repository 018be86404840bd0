"""Opening every awkward photo format, refusing bad files with the right reason, and the
pure measures (sharpness, duplicates, crop boxes) that prep's verdicts rest on."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFilter
from skimage import data

from engine.prep.cropping import face_crop_box, render_crop
from engine.prep.faces import encode_faces, find_faces
from engine.prep.loading import decode_photo
from engine.prep.manifest import Reason
from engine.prep.quality import face_sharpness, near_duplicates, perceptual_hash
from engine.prep.sources import PhotoSource, SourceRejected, read_source

MAX_PIXELS = 120_000_000
ASTRONAUT = Image.fromarray(data.astronaut())


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    # Stored on its side, as a phone held upright writes it, with orientation 6 to undo that.
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(ASTRONAUT.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())


def rgba_png() -> bytes:
    rgba = ASTRONAUT.convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, 400:] = 0  # a transparent strip must come out white, not black
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def tiff_16bit_rgb() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data.astronaut().astype(np.uint16) * 257)
    return buffer.getvalue()


def png_16bit_grey() -> bytes:
    grey = np.asarray(ASTRONAUT.convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return encode(ASTRONAUT, "HEIF")


FORMATS = {
    "jpeg": lambda: encode(ASTRONAUT, "JPEG"),
    "jpeg-exif-rotated": exif_rotated_jpeg,
    "png-rgba": rgba_png,
    "png-palette": lambda: encode(ASTRONAUT.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "png-16bit-grey": png_16bit_grey,
    "webp": lambda: encode(ASTRONAUT, "WEBP", quality=90),
    "heic": heic,
    "gif": lambda: encode(ASTRONAUT, "GIF", save_all=True, append_images=[Image.new("RGB", (512, 512))]),
    "mpo": lambda: encode(ASTRONAUT, "MPO", save_all=True, append_images=[Image.new("RGB", (512, 512))]),
    "tiff": lambda: encode(ASTRONAUT, "TIFF"),
    "tiff-16bit-rgb": tiff_16bit_rgb,
    "jpeg-cmyk": lambda: encode(ASTRONAUT.convert("CMYK"), "JPEG"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_opens_as_upright_8bit_rgb_with_the_face_findable(fmt):
    decoded = decode_photo(FORMATS[fmt](), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (512, 512) == decoded.full_size
    assert np.asarray(decoded.image).dtype == np.uint8
    # The face is found only if the picture is upright, first frame, and tones survived.
    faces = find_faces(decoded.image, detect_size=1280, detector="hog")
    assert len(faces) >= 1
    left, top, right, bottom = faces[0]
    assert 150 < (left + right) / 2 < 290 and 60 < (top + bottom) / 2 < 200


def test_sixteen_bit_tones_are_scaled_not_clipped():
    pixels = np.asarray(decode_photo(png_16bit_grey(), max_pixels=MAX_PIXELS).image)
    grey = np.asarray(ASTRONAUT.convert("L"))
    assert np.abs(pixels[..., 0].astype(int) - grey).max() <= 1


def test_transparency_becomes_white():
    pixels = np.asarray(decode_photo(rgba_png(), max_pixels=MAX_PIXELS).image)
    assert (pixels[:, 420:] == 255).all()


def test_jpeg_decodes_only_the_pixels_asked_for():
    big = encode(ASTRONAUT.resize((2048, 2048)), "JPEG")
    decoded = decode_photo(big, max_pixels=MAX_PIXELS, min_long_side=500)
    assert decoded.image.size == (512, 512)  # the 1/4 DCT scale, not a full decode
    assert decoded.full_size == (2048, 2048) and decoded.scale == 0.25


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: encode(ASTRONAUT, "JPEG")[:6000], Reason.CORRUPT),
        (lambda: b"shopping list: milk, eggs\n" * 20, Reason.NOT_AN_IMAGE),
        (lambda: encode(Image.new("1", (12000, 12000)), "PNG"), Reason.TOO_MANY_PIXELS),
    ],
    ids=["truncated", "not-an-image", "decompression-bomb"],
)
def test_bad_bytes_are_refused_with_their_reason(payload, reason):
    with pytest.raises(SourceRejected) as refused:
        decode_photo(payload(), max_pixels=MAX_PIXELS)
    assert refused.value.reason == reason


def test_unreadable_and_empty_files_are_refused(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(SourceRejected) as empty:
        read_source(PhotoSource("empty.jpg", path=tmp_path / "empty.jpg"))
    with pytest.raises(SourceRejected) as gone:
        read_source(PhotoSource("gone.jpg", path=tmp_path / "gone.jpg"))
    assert empty.value.reason == Reason.EMPTY
    assert gone.value.reason == Reason.UNREADABLE


def test_blur_lowers_sharpness():
    box = (170, 80, 270, 180)
    sharp = face_sharpness(ASTRONAUT, box)
    soft = face_sharpness(ASTRONAUT.filter(ImageFilter.GaussianBlur(1.5)), box)
    assert soft < 40 < sharp


def test_near_duplicates_group_and_different_photos_do_not():
    hashes = [
        perceptual_hash(ASTRONAUT),
        perceptual_hash(ASTRONAUT.filter(ImageFilter.GaussianBlur(0.8))),
        perceptual_hash(Image.fromarray(data.coffee())),
        perceptual_hash(ASTRONAUT.crop((100, 0, 512, 412))),
    ]
    assert near_duplicates(hashes, max_distance=6) == {1: 0}
    assert near_duplicates(hashes, max_distance=-1) == {}


def test_near_duplicates_do_not_chain_across_a_library():
    """A~B and B~C, but A and C far apart: C is a photo of its own, not a duplicate of A by way of B."""
    a = 0
    b = a ^ 0b1111  # 4 bits from a
    c = b ^ (0b1111 << 8)  # 4 bits from b, 8 from a
    hashes = [f"{h:016x}" for h in (a, b, c)]
    assert near_duplicates(hashes, max_distance=6) == {1: 0}  # a is kept, b is its duplicate, c stays
    assert near_duplicates(hashes[::-1], max_distance=6) == {1: 0}  # best first: c kept, b of c, a stays


def test_crop_near_an_edge_is_padded_and_keeps_the_face_centred():
    face = (0, 10, 100, 110)  # touching the left edge
    box = face_crop_box(face, (512, 512), face_fraction=0.4, vertical_offset=0.0)
    assert box[2] - box[0] == box[3] - box[1] == 250
    assert box[0] < 0  # overhangs: slid in only a little, the rest is padding
    crop = render_crop(ASTRONAUT, box, 128)
    assert crop.size == (128, 128)
    face_centre_in_crop = ((face[0] + face[2]) / 2 - box[0]) / 250
    assert abs(face_centre_in_crop - 0.5) <= 0.1 + 1e-6


def test_face_encodings_are_dlibs_own():
    """engine.prep.face_encoder runs dlib's network with torch: face_recognition's encodings, to float precision."""
    import face_recognition

    for image in (ASTRONAUT, ASTRONAUT.rotate(12, resample=Image.Resampling.BICUBIC).resize((384, 384))):
        boxes = find_faces(image, detect_size=1280, detector="hog")
        assert boxes
        ours = encode_faces(image, boxes)
        theirs = face_recognition.face_encodings(np.asarray(image), [(t, r, b, left) for left, t, r, b in boxes],
                                                 num_jitters=1, model="small")
        assert len(ours) == len(theirs)
        assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)) < 1e-5
