"""What LIKENESS_HOME holds, as the service shows it: datasets/NAME, runs/NAME and their files.

    LIKENESS_HOME/jobs.sqlite3   the queue        LIKENESS_HOME/logs/      one log per job
    LIKENESS_HOME/datasets/NAME  prep's output    LIKENESS_HOME/uploads/   uploaded photos
    LIKENESS_HOME/runs/NAME      a training run (and its generations/)

Every path here comes through `security.contained`, so nothing outside a dataset or run folder
is ever listed or served. A dataset or run folder is itself resolved on every read: one that is
a symlink to somewhere outside LIKENESS_HOME is no dataset or run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine.models.lora_files import LORA_FILENAME
from engine.service.errors import NotFound, PathRefused
from engine.service.models import NAME_PATTERN, DatasetSummary, RunSummary
from engine.service.security import contained
from engine.training.run_dir import RunDir

DATASETS = "datasets"
RUNS = "runs"
UPLOADS = "uploads"
LOGS = "logs"


def check_name(name: str, what: str) -> str:
    """A dataset or run name: one plain path segment, never '..', never hidden."""
    if not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        raise NotFound(f"no {what} named {name!r}")
    return name


def relative(home: Path, path: Path | str) -> str:
    """`path` as the API shows it: relative to LIKENESS_HOME when inside it."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(home.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def file_url(home: Path, path: Path | str) -> str | None:
    """The URL that serves a file of a dataset or run, or None for any other file."""
    parts = Path(relative(home, path)).parts
    if len(parts) >= 3 and parts[0] in (DATASETS, RUNS):
        return f"/{parts[0]}/{quote(parts[1])}/files/" + "/".join(quote(p) for p in parts[2:])
    return None


def _home_folder(home: Path, parent: str, name: str, marker: str, what: str) -> Path:
    """HOME/parent/NAME after symlinks, holding `marker`: a link that leads outside the home is no such folder."""
    try:
        folder = contained(home, f"{parent}/{check_name(name, what)}")
    except PathRefused:
        raise NotFound(f"no {what} named {name!r}") from None
    if not (folder / marker).is_file():
        raise NotFound(f"no {what} named {name!r}")
    return folder


def _inside_home(home: Path, folder: Path) -> bool:
    return Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(home))


def dataset_dir(home: Path, name: str) -> Path:
    return _home_folder(home, DATASETS, name, "manifest.json", "dataset")


def run_dir(home: Path, name: str) -> Path:
    return _home_folder(home, RUNS, name, "run.json", "run")


def dataset_file(home: Path, name: str, path: str) -> Path:
    return _file_in(dataset_dir(home, name), path)


def run_file(home: Path, name: str, path: str) -> Path:
    return _file_in(run_dir(home, name), path)


def _file_in(root: Path, path: str) -> Path:
    target = contained(root, path)
    try:
        found = target.is_file()
    except OSError:  # a path the file system cannot even look up (too long after its links): not there
        found = False
    if not found:
        raise NotFound(f"no file {path!r}")
    return target


def list_datasets(home: Path) -> list[DatasetSummary]:
    found = []
    for folder in sorted((home / DATASETS).glob("*/manifest.json")):
        root = folder.parent
        if not _inside_home(home, folder):
            continue  # a link to a dataset outside the home: not ours to show
        try:
            manifest = json.loads(folder.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a dataset being written or damaged: not listed rather than a failed list
        report = root / "report.png"
        found.append(DatasetSummary(
            name=root.name, photos=str(manifest.get("photos", "")), size=int(manifest.get("size", 0)),
            accepted=int(manifest.get("accepted", 0)), rejected=manifest.get("rejected", {}),
            instance_prompt=str(manifest.get("instance_prompt", "")),
            manifest_url=f"/datasets/{quote(root.name)}/manifest",
            report_url=f"/datasets/{quote(root.name)}/report" if report.is_file() else None))
    return found


def dataset_manifest(home: Path, name: str) -> dict[str, Any]:
    return json.loads((dataset_dir(home, name) / "manifest.json").read_text())


def run_summary(home: Path, folder: Path) -> RunSummary:
    record = RunDir(folder).read_run() or {}
    config = record.get("config", {})
    base = record.get("base")
    samples = sorted((folder / "samples").glob("step-*.png"))
    best = record.get("best_likeness") or {}
    recommendation = record.get("recommendation") or {}
    return RunSummary(
        name=folder.name, status=record.get("status"),
        base=base.get("spec") if isinstance(base, dict) else base,
        steps=record.get("steps"), steps_done=record.get("steps_done"),
        lora_rank=record.get("lora_rank"), lora_alpha=record.get("lora_alpha"),
        lr=config.get("lr"), resolution=config.get("resolution"), dataset=_dataset_name(home, record.get("dataset")),
        batch_size=config.get("batch_size"),
        seed=record.get("seed"), token=config.get("token"), class_word=config.get("class_word"),
        num_images=record.get("num_images"), final_loss=record.get("final_loss"),
        identity_score_last_grid=record.get("identity_score_last_grid"),
        best_likeness=best.get("likeness"), best_likeness_step=best.get("step"),
        memorisation_at_best=best.get("memorisation"), recommended_step=recommendation.get("step"),
        recommendation=recommendation.get("reason"),
        wall_time_s=record.get("wall_time_s"), median_seconds_per_step=record.get("median_seconds_per_step"),
        peak_memory_mb=record.get("peak_memory_mb"), device=record.get("device"),
        gpu_name=record.get("gpu_name"), precision=record.get("precision"),
        where=record.get("where"), cost_usd=record.get("cost_usd"),
        started_at=record.get("started_at"), finished_at=record.get("finished_at"),
        lora_url=f"/runs/{quote(folder.name)}/lora" if (folder / LORA_FILENAME).is_file() else None,
        latest_sample_url=file_url(home, samples[-1]) if samples else None,
    )


def _dataset_name(home: Path, dataset: str | None) -> str | None:
    """datasets/me for a dataset in the home, runs/r/dataset for one prep made for the run, else its path."""
    return relative(home, dataset) if dataset else None


def list_runs(home: Path) -> list[RunSummary]:
    return [run_summary(home, path.parent) for path in sorted((home / RUNS).glob("*/run.json"))
            if _inside_home(home, path)]


def run_detail(home: Path, name: str) -> dict[str, Any]:
    """The run's summary, its whole run.json, and its sample grids, checkpoints and generations."""
    folder = run_dir(home, name)
    run = RunDir(folder)
    samples = []
    for grid in sorted(run.samples.glob("step-*.png")):
        scores = grid.with_suffix(".json")
        measures: dict[str, Any] = {}
        if scores.is_file():
            try:
                measures = json.loads(scores.read_text())
            except (OSError, json.JSONDecodeError):
                measures = {}
        samples.append({"step": int(grid.stem.removeprefix("step-")), "url": file_url(home, grid),
                        "identity_score": measures.get("identity_score_mean"), "likeness": measures.get("likeness"),
                        "memorisation": measures.get("memorisation"), "variety": measures.get("variety")})
    generations = []
    for folder_ in sorted((folder / "generations").glob("*/")):
        if not _inside_home(home, folder_):
            continue
        generations.append({"name": folder_.name,
                            "grids": [file_url(home, g) for g in sorted(folder_.glob("*.png"))],
                            "images": len(list((folder_ / "images").glob("*.png")))})
    return {"summary": run_summary(home, folder).model_dump(), "run": run.read_run(), "samples": samples,
            "checkpoints": run.checkpoint_steps(), "generations": generations}


def run_metrics(home: Path, name: str) -> list[dict[str, Any]]:
    return RunDir(run_dir(home, name)).read_metrics()
