"""Finding the photos in a folder or a zip export, and reading their bytes (never writing)."""

from __future__ import annotations

import os
import stat
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
# Photos (JPEG, HEIC, PNG) are compressed already: a zip of them expands to about its own size. One
# that says it expands to many times that, and to more than a few hundred MB, is a zip bomb, refused
# from its directory before a member is inflated.
MAX_ZIP_RATIO = 20
ZIP_SMALL_ENOUGH = 512 * 1024 * 1024


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
    problem = zip_expansion_problem(archive, infos)
    if problem:
        raise LikenessError(problem)
    for info in sorted(infos, key=lambda i: i.filename):
        if info.is_dir():
            continue
        if _skipped(info.filename):
            skipped += 1
            continue
        sources.append(PhotoSource(name=info.filename, archive=archive))
    return sources, skipped


def zip_expansion_problem(archive: Path, infos: list[zipfile.ZipInfo] | None = None) -> str | None:
    """Why the zip `archive` expands to too much to be a zip of photos (one line), or None.

    The total of every member, not each member alone: a bomb of many members each under the
    per-file limit would otherwise cost minutes of CPU to inflate and reject one by one."""
    if infos is None:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    expanded = sum(max(0, info.file_size) for info in infos)
    packed = max(1, archive.stat().st_size)
    if expanded > ZIP_SMALL_ENOUGH and expanded > MAX_ZIP_RATIO * packed:
        return (f"{archive.name} would expand from {packed / 2**20:.1f} MB to {expanded / 2**20:,.0f} MB: "
                f"photos do not compress like that (a zip bomb?); unpack it yourself if it is real")
    return None


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file (through symlinks). A FIFO, a device (a link to /dev/zero) or a
    socket is refused before a byte is read: reading one blocks for good or never ends.

    Opened non-blocking, then checked on the open descriptor: a file swapped for a FIFO between a
    check and the open cannot make the read wait."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceRejected(Reason.NOT_A_FILE, _file_kind(info.st_mode))
        if info.st_size > MAX_FILE_BYTES:
            raise SourceRejected(Reason.FILE_TOO_LARGE, f"{info.st_size} bytes")
        data = handle.read(MAX_FILE_BYTES + 1)  # a file that grew since the check is still bounded
    if len(data) > MAX_FILE_BYTES:
        raise SourceRejected(Reason.FILE_TOO_LARGE, f"over {MAX_FILE_BYTES} bytes")
    return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return f"{kind}, not a regular file"
    return "not a regular file"


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
            data = _read_regular_file(source.path)
    except SourceRejected:
        raise
    except (OSError, RuntimeError, KeyError, zipfile.BadZipFile, NotImplementedError) as error:
        # Missing, permission denied, broken symlink, encrypted or unsupported zip member.
        raise SourceRejected(Reason.UNREADABLE, f"{type(error).__name__}: {error}") from error
    if not data:
        raise SourceRejected(Reason.EMPTY, "zero bytes")
    return data
