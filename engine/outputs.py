"""Where commands may write, checked before anything is created, and undone when a command fails.

Every command follows one order: check each output path (nothing on the way is a file, never inside
one of the command's inputs), validate the inputs, and only then create the output. A command that
fails after creating folders removes the ones it created, so a failed command leaves the file
system as it found it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import LikenessError


def first_missing(path: Path) -> Path | None:
    """The outermost folder on the way to ``path`` (``path`` included) that does not exist yet."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing = candidate
    return missing


def check_output_path(path: Path, flag: str, inputs: Iterable[tuple[str, Path | None]] = ()) -> None:
    """``path`` can be created or written: no file on the way to it, and not inside an input.

    ``inputs`` are (flag, path) pairs of what the command reads; writing inside one of them would
    change what the user gave it.
    """
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LikenessError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    resolved = path.resolve()
    for input_flag, source in inputs:
        if source is None or not source.exists():
            continue
        source = source.resolve()
        if source.is_dir() and (resolved == source or resolved.is_relative_to(source)):
            raise LikenessError(f"{flag} {path} is inside {input_flag} {source}; likeness never writes into its inputs")


@contextmanager
def removed_on_failure(*paths: Path) -> Iterator[None]:
    """Remove the folders created on the way to ``paths`` if the block raises.

    What did not exist before the block is the command's own, so removing it loses nothing of the user's.
    """
    created = [missing for missing in (first_missing(path) for path in paths) if missing is not None]
    try:
        yield
    except BaseException:
        for folder in created:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.exists():
                folder.unlink(missing_ok=True)
        raise


def create_folder(folder: Path, flag: str = "--out") -> None:
    """Create ``folder`` (and its parents); an OS refusal becomes one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LikenessError(f"cannot write to {flag} {folder}: {error.strerror or error}") from None
