"""The run directory's files: run.json, metrics.jsonl, samples/ and checkpoints/.

Paths and their reading and writing live here, so the trainer, the generator and (later) the
service agree on one layout.

``--force`` replaces a run in two moves, so a new run that fails to start loses nothing: the earlier
run's files are renamed into RUN/.replaced (one rename each, on one file system), and deleted only
once the new run is under way; a new run that stops before that puts them back. A crash in between
leaves RUN/.replaced, which the next run started in RUN puts back first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.damaged import DamagedFile, json_lines, read_json_object
from engine.errors import LikenessError
from engine.models.lora_files import LORA_FILENAME
from engine.training.curves import CURVES_FILE

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
DATASET = "dataset"
# What a training run writes into its folder; anything else there (generations, the user's notes) is
# not the run's to replace.
RUN_FILES = (RUN_JSON, METRICS, LORA_FILENAME, CURVES_FILE, "samples", "checkpoints")
REPLACED = ".replaced"  # the run --force is replacing, until the new run is under way
DISCARDED = ".discarded"  # on its way out: whatever a crash left here is deleted at the next start
_MOVED = "moved.json"  # in REPLACED: which files were moved, and by which process
# What the run writes: samples/step-000100.png, checkpoints/step-000100. Anything else there (a sync
# tool's "step-000100 (copy).png", a renamed "step-000100-old") is the user's, and no step.
_STEP = re.compile(r"step-(\d{1,12})")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lora(self) -> Path:
        return self.root / LORA_FILENAME

    def sample_path(self, step: int) -> Path:
        return self.samples / f"step-{step:06d}.png"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (a half-written one has no state.json)."""
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for child in self.checkpoints.iterdir():
            step = _STEP.fullmatch(child.name)
            if step and (child / "state.json").is_file():
                steps.append(int(step[1]))
        return sorted(steps)

    def sample_grids(self) -> list[tuple[int, Path]]:
        """(step, path) of the sample grids, oldest first; files not named as the run names them are left out."""
        if not self.samples.is_dir():
            return []
        found = []
        for path in self.samples.glob("step-*.png"):
            step = _STEP.fullmatch(path.stem)
            if step:
                found.append((int(step[1]), path))
        return sorted(found)

    def read_run(self) -> dict[str, Any] | None:
        """run.json, or None when there is none or it is damaged (``run_damage`` says why)."""
        try:
            return read_json_object(self.run_json)
        except (OSError, DamagedFile):
            return None

    def run_damage(self) -> str | None:
        """Why run.json cannot be read (one line), or None when it reads or is not there."""
        try:
            read_json_object(self.run_json)
        except DamagedFile as error:
            return str(error)
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"{RUN_JSON} cannot be read: {error.strerror or error}"
        return None

    def write_run(self, record: dict[str, Any]) -> None:
        write_json_atomically(self.run_json, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl with a step; a line a full disk cut short (or any line that is not
        a step's object) is left out: the step is lost, the curve is not."""
        if not self.metrics.is_file():
            return []
        rows, _bad = json_lines(self.metrics)
        return [row for row in rows if isinstance(row.get("step"), int) and not isinstance(row["step"], bool)]

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the rows up to ``last_step``: a resumed run continues the curve instead of repeating it."""
        rows = [row for row in self.read_metrics() if row["step"] <= last_step]
        partial = self.metrics.with_suffix(".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(partial, self.metrics)

    @property
    def dataset(self) -> Path:
        """Where a run prepares raw photos (``--data`` that is not a prepared dataset)."""
        return self.root / DATASET

    def prepare_for_new_run(self, force: bool, preps_dataset: bool = False) -> bool:
        """Check ``root`` may hold a new run; with ``force``, set aside what an earlier run left (only our
        files, and its prepared photos when this run prepares its own). True when something was set
        aside: the caller then calls :meth:`discard_replaced` once the new run is under way, or
        :meth:`put_back_replaced` if it stops before."""
        if self.root.exists() and not self.root.is_dir():
            raise LikenessError(f"--out {self.root} is a file, not a folder")
        previous = self.read_run()
        if self.root.is_dir() and any(self.root.iterdir()):
            if previous is None:
                raise LikenessError(
                    f"--out {self.root} already holds files that are not a likeness run; choose a new or empty folder"
                )
            if not force:
                if previous.get("status") == "done":
                    raise LikenessError(f"--out {self.root} already holds a finished run; pass --force to overwrite it")
                raise LikenessError(
                    f"--out {self.root} holds an unfinished run; pass --resume to continue it or --force to start over"
                )
            ensure_writable(self.root)
            self._set_aside(RUN_FILES + ((DATASET,) if preps_dataset else ()))
            return True
        ensure_writable(self.root)
        return False

    def _set_aside(self, names: tuple[str, ...]) -> None:
        aside = self.root / REPLACED
        try:
            aside.mkdir()
            moved = [name for name in names if _exists(self.root / name)]
            # The list first, atomically: whoever puts the files back knows which were the old run's,
            # even when a crash cut this loop short.
            write_json_atomically(aside / _MOVED, {"replacing": list(names), "moved": moved, "pid": os.getpid(),
                                                  "process_started": _process_started(os.getpid()),
                                                  "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
            for name in moved:
                os.rename(self.root / name, aside / name)
        except OSError as error:
            with contextlib.suppress(OSError):  # if not now, the next start puts them back
                self.put_back_replaced()
            raise LikenessError(f"cannot set aside the run in {self.root}: {error.strerror or error}") from None

    def discard_replaced(self) -> None:
        """The new run is under way: delete the run it replaces (renamed first, so a crash while
        deleting leaves nothing that looks like a run to put back)."""
        aside, trash = self.root / REPLACED, self.root / DISCARDED
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(aside, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def put_back_replaced(self) -> bool:
        """Put the run that ``--force`` set aside back as it was, removing what the new run wrote in its
        place. Safe to repeat after a crash at any point; False when nothing was set aside."""
        aside, trash = self.root / REPLACED, self.root / DISCARDED
        if not aside.is_dir():
            return False
        moved = _read_moved(aside)
        shutil.rmtree(trash, ignore_errors=True)
        trash.mkdir()
        if moved is not None:  # without the list, nothing was moved yet
            for name in moved["replacing"]:
                here, kept = self.root / name, aside / name
                if _exists(kept):
                    if _exists(here):
                        os.rename(here, trash / name)
                    os.rename(kept, here)
                elif name not in moved["moved"] and _exists(here):
                    os.rename(here, trash / name)  # the new run's, with nothing of the old one's to restore
        os.rename(aside, trash / REPLACED)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def recover_replaced(self) -> str | None:
        """Before a run starts in ``root``: put back what a crashed ``--force`` set aside, and say so.

        Refused while the process that set it aside still runs: that run is not finished replacing.
        """
        shutil.rmtree(self.root / DISCARDED, ignore_errors=True)
        aside = self.root / REPLACED
        if not aside.is_dir():
            return None
        moved = _read_moved(aside) or {}
        pid = moved.get("pid")
        if pid and pid != os.getpid() and _process_started(pid) == moved.get("process_started") and _alive(pid):
            raise LikenessError(f"--out {self.root} is being replaced by a run still in progress (process {pid}); "
                                "wait for it or stop it first")
        try:
            self.put_back_replaced()
        except OSError as error:
            raise LikenessError(f"{aside} holds the run an interrupted --force set aside, and putting it back "
                                f"failed: {error.strerror or error}") from None
        return (f"put back the run in {self.root} that an interrupted --force had set aside "
                f"(the new run stopped before its first step)")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _read_moved(aside: Path) -> dict[str, Any] | None:
    try:
        return json.loads((aside / _MOVED).read_text())
    except (OSError, ValueError):
        return None


def _process_started(pid: int) -> str | None:
    """When ``pid`` started (Linux's /proc), so a recycled pid is not taken for the process that set a run aside."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command's name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".likeness-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise LikenessError(f"cannot write to {folder}: {error.strerror or error}") from None


def write_json_atomically(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(partial, path)
