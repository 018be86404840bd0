"""The run directory's files: run.json, metrics.jsonl, samples/ and checkpoints/.

Paths and their reading and writing live here, so the trainer, the generator and (later) the
service agree on one layout.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import LikenessError
from engine.lora_files import LORA_FILENAME

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"


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
            if child.name.startswith("step-") and (child / "state.json").is_file():
                steps.append(int(child.name.removeprefix("step-")))
        return sorted(steps)

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_json.is_file():
            return None
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError:
            return None

    def write_run(self, record: dict[str, Any]) -> None:
        write_json_atomically(self.run_json, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line a full disk cut short: the step is lost, the curve is not
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the rows up to ``last_step``: a resumed run continues the curve instead of repeating it."""
        rows = [row for row in self.read_metrics() if row["step"] <= last_step]
        partial = self.metrics.with_suffix(".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(partial, self.metrics)

    def prepare_for_new_run(self, force: bool) -> None:
        """Check ``root`` may hold a new run; with ``force``, clear what an earlier run left (only our files)."""
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
            for path in (self.run_json, self.metrics, self.lora):
                path.unlink(missing_ok=True)
            for folder in (self.samples, self.checkpoints):
                shutil.rmtree(folder, ignore_errors=True)
        ensure_writable(self.root)


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
