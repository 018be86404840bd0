"""What runs inside the Modal container: the same ``train`` entry point as a local run, on volume paths.

No ``modal`` import here: ``modal_app`` wraps these functions, hands them the volume mount root, two
queues (events out, control in) and a volume commit. The in-process stand-in for the cloud in the
tests calls the same wrapped functions with ``.local()``, a temporary root and ordinary queues.

The container's layout under ``root`` (one Modal Volume each):

    datasets/<dataset_key>/   a dataset, uploaded once per content hash
    runs/<run_key>/           the run directory (run.json, metrics, samples, checkpoints, LoRA)
    cache/                    HF_HOME (the base model, downloaded once) and LIKENESS_HOME
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import TrainingCancelled
from engine.events import Event, Log, OverfittingWarning, Phase, Progress, SampleReady, Started

CONTAINER_ROOT = "/likeness"
STOP = "stop"  # the one control message: stop at the next step boundary


class Channel(Protocol):
    """A queue: ``modal.Queue`` in the cloud, ``queue.Queue`` in process."""

    def put(self, item: Any) -> None: ...

    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...


class RemoteTrainRequest(BaseModel):
    """Everything the container needs to run one training job. No secrets: those come from Modal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict[str, Any] = Field(description="TrainConfig as JSON; data and out are replaced by volume paths.")
    dataset_key: str = Field(description="Folder of the dataset in the datasets volume (its content hash).")
    run_key: str = Field(description="Folder of the run in the runs volume.")
    gpu: str = Field(description="The Modal GPU type the function was given (for the cost in run.json).")
    root: str = Field(default=CONTAINER_ROOT, description="Where the volumes are mounted.")


def remote_paths(root: str | Path, dataset_key: str, run_key: str) -> tuple[Path, Path, Path]:
    """(dataset folder, run folder, cache folder) under the volume root."""
    root = Path(root)
    return root / "datasets" / dataset_key, root / "runs" / run_key, root / "cache"


def event_to_message(event: Event, run_root: Path) -> dict[str, Any]:
    """An engine event as a small picklable dict; sample grids travel as paths inside the run folder."""
    if isinstance(event, Progress):
        return {"kind": "progress", "step": event.step, "total": event.total, "loss": event.loss, "lr": event.lr,
                "seconds_per_step": event.seconds_per_step, "eta_seconds": event.eta_seconds}
    if isinstance(event, SampleReady):
        # A grid can be several MB, over a queue item's size limit: the volume carries it, the queue its name.
        return {"kind": "sample", "step": event.step, "path": Path(event.path).relative_to(run_root).as_posix(),
                "identity_score": event.identity_score, "likeness": event.likeness,
                "memorisation": event.memorisation, "variety": event.variety,
                "recommended_step": event.recommended_step}
    if isinstance(event, OverfittingWarning):
        return {"kind": "overfitting", "step": event.step, "cause": event.cause, "message": event.message}
    if isinstance(event, Started):
        return {"kind": "started", "first_step": event.first_step, "total": event.total}
    if isinstance(event, Phase):
        return {"kind": "phase", "name": event.name, "index": event.index, "total": event.total,
                "fraction": event.fraction}
    return {"kind": "log", "message": event.message}


def _stop_requested(control: Channel) -> bool:
    try:
        message = control.get(block=False)
    except queue.Empty:  # queue.Queue; modal.Queue returns None instead
        return False
    return message == STOP


def run_training(request: RemoteTrainRequest, events: Channel, control: Channel,
                 commit: Callable[[], None]) -> dict[str, Any]:
    """Train in the container; stream events; commit the runs volume at checkpoints, samples and the end.

    A retry (Modal runs the function again after a crash or preemption) finds the checkpoints the
    first attempt committed and resumes from the newest, so it follows the same loss curve.
    """
    from engine.placement.gpus import modal_gpu
    from engine.settings import Settings
    from engine.training.config import TrainConfig
    from engine.training.run_dir import RunDir
    from engine.training.trainer import train

    started = time.monotonic()
    dataset, out, cache = remote_paths(request.root, request.dataset_key, request.run_key)
    run = RunDir(out)
    resume = bool(run.checkpoint_steps())
    previous_cost = ((run.read_run() or {}).get("cost_usd") or 0.0) if resume else 0.0
    # The client cleared this folder for a new run, so whatever is in it is this job's own.
    config = TrainConfig(**{**request.config, "data": dataset, "out": out, "resume": resume, "force": not resume})
    settings = Settings(home=cache / "likeness")
    price = modal_gpu(request.gpu).usd_per_second

    def on_event(event: Event) -> None:
        if isinstance(event, SampleReady):
            commit()  # the client reads the grid from the volume as soon as it hears of it
        events.put(event_to_message(event, out))

    def step_hook(step: int) -> None:
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            commit()  # a retry in a fresh container resumes from here
        if _stop_requested(control):
            raise TrainingCancelled()

    if resume:
        events.put(event_to_message(Log(f"resuming on Modal from step {run.checkpoint_steps()[-1]}"), out))
    status = "failed"
    try:
        result = train(config, settings, on_event, step_hook)
        status = "done"
        return {"status": status, "steps": result.steps, "final_loss": result.final_loss}
    except TrainingCancelled:
        status = "cancelled"
        return {"status": status}
    finally:
        record_cloud_run(run, request.gpu, previous_cost + (time.monotonic() - started) * price)
        commit()
        events.put({"kind": "end", "status": status})


def record_cloud_run(run, gpu: str, cost_usd: float) -> None:
    """Say in run.json that the run was on Modal, on which GPU, and what it cost so far."""
    from engine.placement.gpus import PRICES_AS_OF

    record = run.read_run()
    if record is None:
        return  # it stopped before the trainer wrote anything
    run.write_run({**record, "where": "modal", "modal_gpu": gpu, "cost_usd": round(cost_usd, 4),
                   "prices_as_of": PRICES_AS_OF})


class RemoteGenerateRequest(BaseModel):
    """One generation job against a run that is in the runs volume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict[str, Any] = Field(description="GenerateConfig as JSON; lora and out are replaced by volume paths.")
    run_key: str = Field(description="Folder of the run in the runs volume.")
    out_name: str = Field(description="Folder under the run's generations/ for the images.")
    root: str = Field(default=CONTAINER_ROOT, description="Where the volumes are mounted.")


def run_generation(request: dict[str, Any]) -> dict[str, Any]:
    """Generate into RUN/generations/<out_name> in the container; return what was written, relative to the run."""
    from engine.generation.generator import GenerateConfig, generate
    from engine.settings import Settings

    job = RemoteGenerateRequest(**request)
    _, run_root, cache = remote_paths(job.root, "-", job.run_key)
    out = run_root / "generations" / job.out_name
    config = GenerateConfig(**{**job.config, "lora": run_root, "out": out})
    result = generate(config, Settings(home=cache / "likeness"))
    return {"out": out.relative_to(run_root).as_posix(), "images": len(result.images),
            "grids": [grid.relative_to(run_root).as_posix() for grid in result.grids]}
