"""`prepare_photos` and `likeness prep` end to end on real faces: scikit-image's astronaut as the
person, faces from its Labeled-Faces-in-the-Wild subset as other people, and its face-free
photos, in every awkward format and every way a file can be bad."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from skimage import data

from engine.cli import main
from engine.errors import LikenessError
from engine.prep import (
    Manifest,
    PrepConfig,
    Reason,
    is_prepared_dataset,
    load_identity,
    prepare_photos,
    score_image,
)
from engine.prep.faces import find_faces

SIZE = 256
ASTRONAUT = Image.fromarray(data.astronaut())
# Distinct framings of the one person: a crop window (l, t, r, b), mirrored?, rotation, colour.
FRAMINGS = [
    ((0, 0, 512, 512), False, 0, 1.0),
    ((60, 0, 460, 400), True, 8, 0.3),
    ((100, 20, 400, 320), False, -6, 1.2),
    ((0, 40, 420, 460), True, 4, 1.0),
    ((140, 0, 512, 372), False, -10, 0.3),
    ((20, 0, 380, 360), True, 6, 1.2),
    ((80, 30, 480, 430), False, -3, 1.0),
    ((30, 10, 330, 310), True, 10, 0.3),
    ((120, 10, 470, 360), True, -8, 1.2),
    ((50, 60, 440, 450), False, 12, 1.0),
    ((0, 0, 360, 360), False, 3, 0.5),
]


def astronaut(i: int, side: int = 440) -> Image.Image:
    box, mirror, angle, colour = FRAMINGS[i]
    image = ASTRONAUT.crop(box)
    image = ImageOps.mirror(image) if mirror else image
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(90, 100, 110)) if angle else image
    return ImageEnhance.Color(image.resize((side, side), Image.Resampling.LANCZOS)).enhance(colour)


def stranger(k: int, side: int = 300) -> Image.Image:
    pixels = (data.lfw_subset()[k] * 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((side, side), Image.Resampling.LANCZOS).convert("RGB")


def save(image: Image.Image, path: Path, fmt: str | None = None, **params) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **params)


def make_library(root: Path) -> dict[str, str | None]:
    """Write the test library; return each file's expected reason (None = accepted)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    expected: dict[str, str | None] = {}

    def accept(name: str, write) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write(root / name)
        expected[name] = None

    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated a quarter turn clockwise; orientation 8 turns it back
    accept("2019/IMG_0001.jpg", lambda p: save(astronaut(0).transpose(Image.Transpose.ROTATE_270), p, "JPEG", exif=exif.tobytes()))
    accept("2019/IMG_0002.png", lambda p: save(astronaut(1).convert("RGBA"), p))
    accept("2019/IMG_0003.webp", lambda p: save(astronaut(2), p, "WEBP", quality=92))
    accept("2020/IMG_0004.heic", lambda p: save(astronaut(3), p, "HEIF"))
    accept("2020/IMG_0005.gif", lambda p: save(astronaut(4), p, "GIF"))
    accept("2020/IMG_0006.mpo", lambda p: save(astronaut(5), p, "MPO", save_all=True, append_images=[astronaut(0)]))

    def tiff16(p: Path) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(p, np.asarray(astronaut(6)).astype(np.uint16) * 257)

    accept("2020/IMG_0007.tif", tiff16)
    accept("2021/IMG_0008.jpg", lambda p: save(astronaut(7).convert("CMYK"), p, "JPEG"))
    accept("2021/IMG_0009.png", lambda p: save(astronaut(8).convert("P", palette=Image.Palette.ADAPTIVE), p))
    accept("2021/IMG_0010.png", lambda p: save(
        Image.fromarray(np.asarray(astronaut(9).convert("L")).astype(np.uint16) * 257), p))

    def group(p: Path) -> None:
        canvas = Image.new("RGB", (760, 440), (200, 200, 190))
        canvas.paste(astronaut(10), (0, 0))
        canvas.paste(stranger(3, 260), (480, 90))
        save(canvas, p, "JPEG", quality=92)

    accept("2021/group.jpg", group)

    def reject(name: str, reason: Reason, write) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write(root / name)
        expected[name] = str(reason)

    reject("things/coffee.jpg", Reason.NO_FACE, lambda p: save(Image.fromarray(data.coffee()), p))
    reject("things/cat.jpg", Reason.NO_FACE, lambda p: save(Image.fromarray(data.chelsea()), p))
    reject("people/other0.png", Reason.DIFFERENT_PERSON, lambda p: save(stranger(0), p))
    reject("people/other7.png", Reason.DIFFERENT_PERSON, lambda p: save(stranger(7), p))
    reject("far/small.jpg", Reason.TOO_SMALL, lambda p: save(ASTRONAUT.resize((220, 220)), p))
    reject("bad/blurry.jpg", Reason.BLURRY, lambda p: save(astronaut(0).filter(ImageFilter.GaussianBlur(2)), p))
    reject("bad/dark.jpg", Reason.TOO_DARK, lambda p: save(ImageEnhance.Brightness(astronaut(2)).enhance(0.2), p))
    reject("bad/bright.jpg", Reason.TOO_BRIGHT, lambda p: save(
        Image.blend(astronaut(3), Image.new("RGB", (440, 440), "white"), 0.8), p))
    # A softer re-save of IMG_0003: the sharper original is the one kept.
    reject("2019/IMG_0003 copy.jpg", Reason.DUPLICATE, lambda p: save(
        astronaut(2).filter(ImageFilter.GaussianBlur(0.6)), p, "JPEG", quality=80))
    reject("broken/empty.jpg", Reason.EMPTY, lambda p: p.write_bytes(b""))
    truncated = io.BytesIO()
    astronaut(1).save(truncated, "JPEG")
    reject("broken/truncated.jpg", Reason.CORRUPT, lambda p: p.write_bytes(truncated.getvalue()[:5000]))
    reject("broken/notes.jpg", Reason.NOT_AN_IMAGE, lambda p: p.write_text("not a photo\n" * 50))
    reject("broken/bomb.png", Reason.TOO_MANY_PIXELS, lambda p: save(Image.new("1", (12000, 12000)), p))
    reject("broken/gone.jpg", Reason.UNREADABLE, lambda p: p.symlink_to(root / "nowhere.jpg"))

    # Passed over silently: never in the manifest.
    (root / "2019/clip.mp4").write_bytes(os.urandom(2000))
    (root / "2019/IMG_0001.jpg.json").write_text("{}")
    (root / "2019/IMG_0001.aae").write_text("<plist/>")
    (root / "2019/.DS_Store").write_bytes(b"\0" * 64)
    return expected


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: file bytes' hash, or a symlink's target."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[key] = "-> " + os.readlink(path)
        elif path.is_file():
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[key] = "dir"
    return state


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    return root, make_library(root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, library):
    """Prep the library twice (cold cache, then warm), in its own likeness home."""
    root, _ = library
    before = snapshot(root)
    work = tmp_path_factory.mktemp("prep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIKENESS_HOME", str(work / "home"))
        config = PrepConfig(photos=root, out=work / "dataset", size=SIZE, workers=1, caption=True)
        first = prepare_photos(config)
        first_manifest = (work / "dataset" / "manifest.json").read_text()
        second = prepare_photos(config.model_copy(update={"force": True}))
    return {"first": first, "second": second, "first_manifest": first_manifest, "dataset": work / "dataset",
            "before": before, "after": snapshot(root), "home": work / "home"}


def test_every_file_gets_the_right_verdict(runs, library):
    _, expected = library
    manifest = Manifest.read(runs["dataset"] / "manifest.json")
    verdicts = {e.source: (str(e.reason) if e.reason else None) for e in manifest.entries}
    assert verdicts == expected  # videos, sidecars and hidden files are not there at all
    for entry in manifest.entries:
        assert (entry.status == "accepted") == (entry.reason is None)
    accepted = [e for e in manifest.entries if e.status == "accepted"]
    assert runs["first"].accepted == len(accepted) == manifest.accepted == 11
    assert runs["first"].skipped == 4
    assert manifest.identity_source == "cluster" and manifest.identity_photos >= 11


def test_manifest_records_what_each_verdict_rests_on(runs, library):
    root, _ = library
    manifest = Manifest.read(runs["dataset"] / "manifest.json")
    by_source = {e.source: e for e in manifest.entries}
    for entry in manifest.entries:
        if entry.status == "accepted":
            assert entry.image and entry.sha256 and entry.face_box and entry.crop_box and entry.phash
            assert entry.identity_distance < 0.45 and entry.sharpness >= 40
    assert by_source["people/other0.png"].identity_distance > 0.6
    assert by_source["2019/IMG_0003 copy.jpg"].detail == "of 2019/IMG_0003.webp"
    group = by_source["2021/group.jpg"]
    assert group.faces == 2 and group.face_box[2] < 400  # the astronaut's face, not the stranger's
    assert by_source["broken/empty.jpg"].sha256 is None
    jpeg = by_source["2019/IMG_0001.jpg"]
    assert jpeg.sha256 == hashlib.sha256((root / jpeg.source).read_bytes()).hexdigest()
    assert (jpeg.width, jpeg.height) == (440, 440)


def test_accepted_crops_show_one_centred_face_at_the_framing(runs):
    dataset = runs["dataset"]
    images = sorted((dataset / "images").glob("*.png"))
    assert [p.name for p in images] == [f"{n:04d}.png" for n in range(1, 12)]
    for path in images:
        crop = Image.open(path)
        assert crop.size == (SIZE, SIZE) and crop.mode == "RGB"
        faces = find_faces(crop, detect_size=1280, detector="hog")
        assert len(faces) == 1, path.name
        left, top, right, bottom = faces[0]
        assert 0.3 < (right - left) / SIZE < 0.5, path.name
        assert abs((left + right) / 2 - SIZE / 2) < 0.12 * SIZE, path.name
        assert abs((top + bottom) / 2 - SIZE / 2) < 0.15 * SIZE, path.name
        assert path.with_suffix(".txt").read_text() == "a photo of sks person\n"


def test_dataset_has_identity_report_and_is_recognised(runs):
    dataset = runs["dataset"]
    assert is_prepared_dataset(dataset)
    assert not is_prepared_dataset(dataset / "images")
    report = Image.open(dataset / "report.png")
    assert report.width > 1000 and report.height > 400  # accepted and rejected sections
    identity = json.loads((dataset / "identity.json").read_text())
    assert len(identity["centroid"]) == 128


def test_prep_never_touches_the_photos(runs):
    assert runs["after"] == runs["before"]


def test_second_run_reuses_the_cache_and_gives_the_same_manifest(runs):
    first, second = runs["first"], runs["second"]
    assert second.cached == first.found - 2  # all but the two files with no bytes to hash
    assert second.seconds < first.seconds / 2
    assert (runs["dataset"] / "manifest.json").read_text() == runs["first_manifest"]
    assert (runs["home"] / "cache" / "prep" / "analysis").is_dir()


def test_identity_scores_likeness(runs):
    identity = load_identity(runs["dataset"])
    assert score_image(identity, ASTRONAUT) < 0.35
    assert score_image(identity, stranger(5)) > 0.6
    assert score_image(identity, Image.fromarray(data.coffee())) is None


def test_head_and_shoulders_framing_shows_a_smaller_face(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    photos = tmp_path / "photos"
    for i in (0, 3):
        save(astronaut(i, side=600), photos / f"{i}.jpg")
    prepare_photos(PrepConfig(photos=photos, out=tmp_path / "ds", size=SIZE, framing="head-and-shoulders", workers=1))
    for path in sorted((tmp_path / "ds" / "images").glob("*.png")):
        (left, top, right, bottom), = find_faces(Image.open(path), detect_size=1280, detector="hog")
        assert 0.17 < (right - left) / SIZE < 0.33
        assert (top + bottom) / 2 < SIZE / 2  # the face sits high, shoulders below


def test_zip_export_in_a_process_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    archive = tmp_path / "Takeout.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in (0, 4, 6):
            buffer = io.BytesIO()
            astronaut(i).save(buffer, "JPEG", quality=92)
            zf.writestr(f"Takeout/Google Photos/IMG_{i}.jpg", buffer.getvalue())
            zf.writestr(f"Takeout/Google Photos/IMG_{i}.jpg.json", "{}")
        zf.writestr("__MACOSX/Takeout/._IMG_0.jpg", b"\0" * 100)
    before = archive.read_bytes()
    report = prepare_photos(PrepConfig(photos=archive, out=tmp_path / "ds", size=SIZE, workers=2))
    assert (report.found, report.accepted, report.skipped) == (3, 3, 4)
    sources = [e.source for e in Manifest.read(tmp_path / "ds" / "manifest.json").entries]
    assert sources == [f"Takeout/Google Photos/IMG_{i}.jpg" for i in (0, 4, 6)]
    assert archive.read_bytes() == before


def test_reference_overrides_the_most_photographed_guess(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    photos = tmp_path / "photos"
    for i in (0, 2, 4):
        save(astronaut(i), photos / f"astronaut{i}.jpg")
    save(stranger(3), photos / "friend.png")
    save(stranger(3, side=340), tmp_path / "reference" / "friend-ref.png")
    config = PrepConfig(photos=photos, out=tmp_path / "ds", size=128, min_sharpness=0, workers=1,
                        reference=tmp_path / "reference")
    report = prepare_photos(config)
    verdicts = {e.source: e.reason for e in Manifest.read(tmp_path / "ds" / "manifest.json").entries}
    assert verdicts == {"astronaut0.jpg": Reason.DIFFERENT_PERSON, "astronaut2.jpg": Reason.DIFFERENT_PERSON,
                        "astronaut4.jpg": Reason.DIFFERENT_PERSON, "friend.png": None}
    assert report.accepted == 1


def test_interrupted_prep_leaves_no_dataset_and_keeps_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    photos = tmp_path / "photos"
    for i in (0, 2, 4):
        save(astronaut(i), photos / f"{i}.jpg")
    out = tmp_path / "out" / "ds"

    def stop_while_writing(progress):
        if progress.stage == "writing" and progress.done == 2:
            raise KeyboardInterrupt

    config = PrepConfig(photos=photos, out=out, size=SIZE, workers=1)
    with pytest.raises(KeyboardInterrupt):
        prepare_photos(config, on_progress=stop_while_writing)
    assert list((tmp_path / "out").iterdir()) == []  # neither the dataset nor its temp folder

    prepare_photos(config)
    old = snapshot(out)
    save(astronaut(6), photos / "6.jpg")
    with pytest.raises(KeyboardInterrupt):
        prepare_photos(config.model_copy(update={"force": True}), on_progress=stop_while_writing)
    assert snapshot(out) == old
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ds"]


def test_cli_prep_writes_the_dataset_and_prints_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    photos = tmp_path / "photos"
    for i in (0, 2):
        save(astronaut(i), photos / f"{i}.jpg")
    save(Image.fromarray(data.coffee()), photos / "coffee.jpg")
    started = time.perf_counter()
    code = main(["prep", str(photos), "--out", str(tmp_path / "ds"), "--size", str(SIZE), "--workers", "1",
                 "--caption", "--token", "zwx", "--class-word", "woman"])
    assert code == 0 and time.perf_counter() - started < 60
    out = capsys.readouterr().out
    assert "found 3 photos" in out and "accepted 2" in out and "no face: 1" in out and "images/second" in out
    sheet = next(line for line in out.splitlines() if line.startswith("contact sheet: "))
    assert Path(sheet.removeprefix("contact sheet: ")) == tmp_path / "ds" / "report.png"
    assert (tmp_path / "ds" / "report.png").is_file()
    assert (tmp_path / "ds" / "images" / "0001.txt").read_text() == "a photo of zwx woman\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing", "--out", "{tmp}/ds"], "does not exist"),
        (["{tmp}/photos", "--out", "{tmp}/full"], "not empty"),
        (["{tmp}/photos", "--out", "{tmp}/photos/ds"], "inside PHOTOS"),
        (["{tmp}/photos", "--out", "{tmp}/ds", "--min-brightness", "300"], "--min-brightness"),
        (["{tmp}/photos", "--out", "{tmp}/ds", "--max-upscale", "0"], "--max-upscale"),
        (["{tmp}/note.txt", "--out", "{tmp}/ds"], "neither a folder nor a .zip"),
        (["{tmp}/things", "--out", "{tmp}/ds", "--workers", "1"], "no photo was accepted"),
    ],
    ids=["missing", "out-not-empty", "out-inside-photos", "bad-brightness", "bad-upscale", "not-folder", "none-accepted"],
)
def test_cli_prep_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    save(astronaut(0), tmp_path / "photos" / "0.jpg")
    save(Image.fromarray(data.coffee()), tmp_path / "things" / "coffee.jpg")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "note.txt").write_text("hello")
    code = main(["prep", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_engine_raises_likeness_error_for_zero_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    save(Image.fromarray(data.coffee()), tmp_path / "photos" / "coffee.jpg")
    with pytest.raises(LikenessError, match="1 no face"):
        prepare_photos(PrepConfig(photos=tmp_path / "photos", out=tmp_path / "ds", workers=1))


def test_too_small_photos_get_a_size_hint_that_keeps_them(tmp_path, monkeypatch, capsys):
    """The README demo's photos (260-420 px) at the default 1024 px: every one too small. The one-line
    error says which --size keeps them, and that size does."""
    from engine.prep.demo_photos import make_demo_photos

    monkeypatch.setenv("LIKENESS_HOME", str(tmp_path / "home"))
    make_demo_photos(tmp_path / "photos", count=4)
    code = main(["prep", str(tmp_path / "photos"), "--out", str(tmp_path / "ds"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "4 too small" in err and "--size " in err and "would keep all 4" in err
    size = int(err.split("--size ")[1].split()[0])
    assert size % 64 == 0 and 64 <= size < 1024
    report = prepare_photos(PrepConfig(photos=tmp_path / "photos", out=tmp_path / "ds", size=size, workers=1))
    assert report.accepted == 4 and report.hint is None


def test_size_hint_only_when_too_small_is_the_main_reason():
    from engine.prep.manifest import PhotoEntry, size_hint

    def entry(reason, upscale=None):
        return PhotoEntry(source="x.jpg", status="rejected", reason=reason, upscale=upscale)

    small = [entry(Reason.TOO_SMALL, 1024 / 300), entry(Reason.TOO_SMALL, 1024 / 400)]
    hint = size_hint(small + [entry(Reason.BLURRY)], 1024, 2.0)
    assert hint is not None and hint.suggested_size == 576 and hint.keeps == 2 and hint.too_small == 2
    assert hint.suggested_max_upscale == 3.5
    assert "--size 576 would keep all 2" in hint.text()
    assert size_hint(small + [entry(Reason.BLURRY)] * 3, 1024, 2.0) is None  # mostly blurry: no size helps
    assert size_hint([entry(Reason.BLURRY)], 1024, 2.0) is None
