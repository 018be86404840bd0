"""What LIKENESS_HOME holds, as the service shows it: datasets/NAME, runs/NAME and their files.

    LIKENESS_HOME/jobs.sqlite3   the queue        LIKENESS_HOME/logs/      one log per job
    LIKENESS_HOME/datasets/NAME  prep's output    LIKENESS_HOME/uploads/   uploaded photos
    LIKENESS_HOME/runs/NAME      a training run (and its generations/)

Every path here comes through `security.contained`, so nothing outside a dataset or run folder
is ever listed or served. A dataset or run folder is itself resolved on every read: one that is
a symlink to somewhere outside LIKENESS_HOME is no dataset or run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import ValidationError

from engine.damaged import DamagedFile, read_json_object
from engine.models.lora_files import LORA_FILENAME
from engine.service.errors import Damaged, NotFound, PathRefused
from engine.service.models import DatasetSummary, Job, RunSummary, name_problem
from engine.service.security import contained
from engine.training.run_dir import RunDir

DATASETS = "datasets"
RUNS = "runs"
UPLOADS = "uploads"
LOGS = "logs"
Summary = TypeVar("Summary", DatasetSummary, RunSummary)


def check_name(name: str, what: str) -> str:
    """A dataset or run name: one plain path segment, never '..', never hidden."""
    if name_problem(name):
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
    """Every dataset; one whose manifest.json is damaged is listed with `damaged` saying why."""
    found = []
    for folder in sorted((home / DATASETS).glob("*/manifest.json")):
        root = folder.parent
        if not _inside_home(home, folder):
            continue  # a link to a dataset outside the home: not ours to show
        report = root / "report.png"
        values: dict[str, Any] = {
            "name": root.name, "manifest_url": f"/datasets/{quote(root.name)}/manifest",
            "report_url": f"/datasets/{quote(root.name)}/report" if report.is_file() else None}
        try:
            manifest = read_json_object(folder)
        except FileNotFoundError:
            continue  # removed while listing
        except (OSError, DamagedFile) as error:
            found.append(DatasetSummary(**values, damaged=_why(error)))
            continue
        fields = {"photos": manifest.get("photos", ""), "size": manifest.get("size", 0),
                  "accepted": manifest.get("accepted", 0), "rejected": manifest.get("rejected", {}),
                  "instance_prompt": manifest.get("instance_prompt", "")}
        found.append(_summary(DatasetSummary, values, fields, "manifest.json"))
    return found


def dataset_manifest(home: Path, name: str) -> dict[str, Any]:
    try:
        return read_json_object(dataset_dir(home, name) / "manifest.json")
    except (OSError, DamagedFile) as error:
        raise Damaged(f"dataset {name!r} is damaged: {_why(error)}") from None


def _why(error: Exception) -> str:
    return str(error) if isinstance(error, DamagedFile) else f"cannot be read: {getattr(error, 'strerror', None) or error}"


def _summary(model: type[Summary], values: dict[str, Any], fields: dict[str, Any], source: str) -> Summary:
    """`model` from `fields` as a file gave them: a field of the wrong type (steps: "many") is left
    empty and named in `damaged`, so the rest of the summary still shows."""
    try:
        return model(**values, **fields)
    except ValidationError as error:
        bad = sorted({str(problem["loc"][0]) for problem in error.errors() if problem.get("loc")})
        kept = {key: value for key, value in fields.items() if key not in bad}
        defaults = {key: model.model_fields[key].get_default(call_default_factory=True) for key in bad
                    if key in model.model_fields}
        reason = f"{source}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not of the right type"
        return model(**values, **kept, **defaults, damaged=reason)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def run_summary(home: Path, folder: Path) -> RunSummary:
    run = RunDir(folder)
    record = run.read_run() or {}
    damage = run.run_damage()
    config = _object(record.get("config"))
    base = record.get("base")
    samples = run.sample_grids()
    best = _object(record.get("best_likeness"))
    recommendation = _object(record.get("recommendation"))
    values = {"name": folder.name,
              "lora_url": f"/runs/{quote(folder.name)}/lora" if (folder / LORA_FILENAME).is_file() else None,
              "latest_sample_url": file_url(home, samples[-1][1]) if samples else None}
    dataset = record.get("dataset")
    fields = dict(
        status=record.get("status"), base=base.get("spec") if isinstance(base, dict) else base,
        steps=record.get("steps"), steps_done=record.get("steps_done"),
        lora_rank=record.get("lora_rank"), lora_alpha=record.get("lora_alpha"),
        lr=config.get("lr"), resolution=config.get("resolution"),
        dataset=_dataset_name(home, dataset) if isinstance(dataset, str) else dataset,
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
        started_at=record.get("started_at"), finished_at=record.get("finished_at"))
    if damage:
        return RunSummary(**values, damaged=damage)
    summary = _summary(RunSummary, values, fields, "run.json")
    if summary.damaged is None and "config" in record and not isinstance(record["config"], dict):
        summary.damaged = "run.json: config is not an object"
    return summary


def _dataset_name(home: Path, dataset: str | None) -> str | None:
    """datasets/me for a dataset in the home, runs/r/dataset for one prep made for the run, else its path."""
    return relative(home, dataset) if dataset else None


def list_runs(home: Path) -> list[RunSummary]:
    """Every run; one whose run.json is damaged is listed with `damaged` saying why."""
    return [run_summary(home, path.parent) for path in sorted((home / RUNS).glob("*/run.json"))
            if _inside_home(home, path)]


def with_jobs(runs: list[RunSummary], jobs: list[Job]) -> list[RunSummary]:
    """`runs` as their train jobs (newest first) leave them. A job that ended before its run wrote
    run.json (a failed load, no Modal token) is listed too, so a failure shows where runs are compared;
    a run.json still saying "running" after its job ended takes the job's state; each run names its
    newest job and, if that one ended badly, why."""
    newest: dict[str, Job] = {}
    for job in jobs:
        if job.kind == "train" and job.run_dir and Path(job.run_dir).parent == Path(RUNS):
            newest.setdefault(Path(job.run_dir).name, job)
    by_name = {run.name: run for run in runs}
    for name, job in newest.items():
        run = by_name.get(name)
        if run is None:
            if name_problem(name) is not None:
                continue
            run = by_name[name] = RunSummary(name=name, status=job.state, steps=job.config.get("steps"),
                                             base=job.config.get("base"), lora_rank=job.config.get("rank"),
                                             resolution=job.config.get("resolution"), where=job.ran_on)
        elif run.status == "running" and job.state not in ("queued", "running"):
            run.status = job.state
        run.job_id = job.id
        if job.state in ("failed", "cancelled", "interrupted"):
            run.error = job.error
    return [by_name[name] for name in sorted(by_name)]


def run_detail(home: Path, name: str) -> dict[str, Any]:
    """The run's summary, its whole run.json, and its sample grids, checkpoints and generations.

    A damaged sample score file shows as a grid without scores; a damaged run.json as `run: null`
    with the summary's `damaged` saying why."""
    folder = run_dir(home, name)
    run = RunDir(folder)
    samples = []
    for step, grid in run.sample_grids():
        measures: dict[str, Any] = {}
        try:
            measures = read_json_object(grid.with_suffix(".json"))
        except (OSError, DamagedFile):
            measures = {}
        samples.append({"step": step, "url": file_url(home, grid),
                        **{key: measures.get(field) if isinstance(measures.get(field), (int, float)) else None
                           for key, field in (("identity_score", "identity_score_mean"), ("likeness", "likeness"),
                                              ("memorisation", "memorisation"), ("variety", "variety"))}})
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
