"""Prep on folders that hold what is not a photo: FIFOs, devices, thousands of junk files, photos
over Pillow's own pixel limit, zip bombs; and the dataset folder it leaves behind."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import threading
import zipfile
import zlib

import pytest
from PIL import Image

from engine.errors import LikenessError
from engine.prep import PrepConfig, prepare_photos
from engine.prep.loading import decode_photo
from engine.prep.manifest import Manifest, Reason
from engine.prep.report import COLUMNS, GAP, HEADING, LABEL, MAX_TILES, MORE, TILE, SheetTile, contact_sheet
from engine.prep.sources import PhotoSource, SourceRejected, find_photos, read_source


def _within(seconds: float, function, *args):
    """function(*args) in a thread; fails the test instead of hanging it when it does not return."""
    result: dict = {}

    def call():
        try:
            result["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            result["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} did not return in {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # nobody ever writes: a read would wait for good
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")  # a read would never end
    for path, kind in ((fifo, "FIFO"), (zero, "character device")):
        with pytest.raises(SourceRejected) as rejected:
            _within(5, read_source, PhotoSource(name=path.name, path=path))
        assert rejected.value.reason == Reason.NOT_A_FILE and kind in rejected.value.detail


@pytest.fixture
def awkward_photos(tmp_path, photos):
    """The demo photos, a FIFO, a link to /dev/zero and more junk files than the contact sheet shows."""
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    os.mkfifo(folder / "photo.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    junk = folder / "junk"
    junk.mkdir()
    for i in range(MAX_TILES + 50):
        (junk / f"{i:05d}.jpg").write_bytes(b"not a photo %d" % i)
    return folder


def test_prep_skips_what_is_not_a_file_and_caps_its_contact_sheet(tmp_path, awkward_photos, settings):
    out = tmp_path / "datasets" / "me"
    report = _within(300, prepare_photos, PrepConfig(photos=awkward_photos, out=out, size=64, workers=1))
    assert report.accepted >= 1
    manifest = Manifest.read(out / "manifest.json")
    reasons = {entry.source: entry for entry in manifest.entries}
    assert reasons["photo.jpg"].reason == Reason.NOT_A_FILE and "FIFO" in reasons["photo.jpg"].detail
    assert reasons["zero.jpg"].reason == Reason.NOT_A_FILE
    assert len(manifest.entries) == report.found  # every file listed, though the sheet shows fewer
    with Image.open(out / "report.png") as sheet:  # what the Photos screen opens
        sheet.load()
        # One row of accepted crops, MAX_TILES rejected ones and the line saying how many more.
        rows = 1 + MAX_TILES // COLUMNS
        assert sheet.height <= rows * (TILE + LABEL + GAP) + 2 * HEADING + MORE + GAP, sheet.size
    # The dataset folder is readable like any other folder made here (0755 under the usual umask).
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask


def test_the_contact_sheet_of_thousands_of_rejects_stays_small():
    rejected = [SheetTile(None, f"not an image\n{i}.jpg") for i in range(2000)]
    sheet = contact_sheet([SheetTile(None, "0001\na.jpg")], rejected)
    assert sheet.width * sheet.height < 20_000_000, sheet.size  # 2,000 tiles uncut: 66 MP


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (grey, 8-bit), with one short IDAT: decoding it is cut short."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_photos_up_to_max_pixels_pass_pillows_own_limit():
    # 100 MP: over Pillow's default 89.5 MP, under max_pixels' 120 M. It gets as far as decoding (and
    # this one, cut short, fails there) instead of being called too large from its header.
    with pytest.raises(SourceRejected) as rejected:
        decode_photo(_png_header(10_000, 10_000), max_pixels=120_000_000)
    assert rejected.value.reason == Reason.CORRUPT, rejected.value
    with pytest.raises(SourceRejected) as rejected:
        decode_photo(_png_header(10_000, 13_000), max_pixels=120_000_000)
    assert rejected.value.reason == Reason.TOO_MANY_PIXELS


def test_a_zip_bomb_is_refused_from_its_directory(tmp_path):
    bomb = tmp_path / "photos.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        member = b"\0" * (40 * 2**20)
        for i in range(16):  # 640 MB of zeros in well under 1 MB: each member under the per-file limit
            archive.writestr(f"{i:02d}.jpg", member)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(LikenessError, match="zip bomb"):
        find_photos(bomb)
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.jpg", b"\0" * 2**20)  # compresses as well, but is small: fine
    assert [s.name for s in find_photos(small)[0]] == ["a.jpg"]
