"""Finding the photos in a folder or a zip export, and reading their bytes (never writing)."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import LikenessError
from engine.prep.manifest import Reason

# Passed over silently: exports are full of these and they are never photos.
VIDEO_SUFFIXES = frozenset(
    ".mp4 .mov .m4v .avi .3gp .3g2 .mkv .webm .mts .m2ts .wmv .mpg .mpeg .flv .gifv".split()
)
SIDECAR_SUFFIXES = frozenset(".json .aae .xmp .thm .ini .db".split())

# A photo bigger than this is not a photo; refuse before reading it into memory.
MAX_FILE_BYTES = 256 * 1024 * 1024


class SourceRejected(Exception):
    """A file that cannot be used, with the reason the manifest records."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PhotoSource:
    """One candidate file: a path under a folder, or a member of a zip."""

    name: str
    path: Path | None = None
    archive: Path | None = None


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return True
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in VIDEO_SUFFIXES or suffix in SIDECAR_SUFFIXES


def find_photos(photos: Path) -> tuple[list[PhotoSource], int]:
    """Every candidate file under PHOTOS in a stable order, and how many were skipped."""
    if not photos.exists() and not photos.is_symlink():
        raise LikenessError(f"{photos} does not exist")
    if photos.is_dir():
        return _find_in_folder(photos)
    if photos.is_file() and zipfile.is_zipfile(photos):
        return _find_in_zip(photos)
    raise LikenessError(f"{photos} is neither a folder nor a .zip of photos")


def _find_in_folder(root: Path) -> tuple[list[PhotoSource], int]:
    sources, skipped = [], 0
    # Symlinked folders are not followed (loops); symlinked files are read through.
    for folder, dirnames, filenames in os.walk(root, onerror=None):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(folder, filename)
            name = path.relative_to(root).as_posix()
            if _skipped(name):
                skipped += 1
                continue
            sources.append(PhotoSource(name=name, path=path))
    return sources, skipped


def _find_in_zip(archive: Path) -> tuple[list[PhotoSource], int]:
    sources, skipped = [], 0
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile) as error:
        raise LikenessError(f"cannot read {archive}: {error}") from error
    for info in sorted(infos, key=lambda i: i.filename):
        if info.is_dir():
            continue
        if _skipped(info.filename):
            skipped += 1
            continue
        sources.append(PhotoSource(name=info.filename, archive=archive))
    return sources, skipped


def read_source(source: PhotoSource) -> bytes:
    """The file's bytes; a `SourceRejected` says why they cannot be had."""
    try:
        if source.archive is not None:
            with zipfile.ZipFile(source.archive) as zf:
                info = zf.getinfo(source.name)
                if info.file_size > MAX_FILE_BYTES:
                    raise SourceRejected(Reason.FILE_TOO_LARGE, f"{info.file_size} bytes")
                data = zf.read(info)
        else:
            assert source.path is not None
            size = source.path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise SourceRejected(Reason.FILE_TOO_LARGE, f"{size} bytes")
            data = source.path.read_bytes()
    except SourceRejected:
        raise
    except (OSError, RuntimeError, KeyError, zipfile.BadZipFile, NotImplementedError) as error:
        # Missing, permission denied, broken symlink, encrypted or unsupported zip member.
        raise SourceRejected(Reason.UNREADABLE, f"{type(error).__name__}: {error}") from error
    if not data:
        raise SourceRejected(Reason.EMPTY, "zero bytes")
    return data
