"""Training on a Modal GPU that looks, from here, exactly like training here.

    check inputs here -> upload the dataset once (content hash) -> start the function on the GPU
    -> stream progress and sample grids into the local run directory -> download the run -> done

Cancel works as locally: ``step_hook`` raises ``TrainingCancelled`` on a progress event; the container
is asked to stop at its next step (it writes run.json and commits), then the function is cancelled
if it has not ended, and what it left is downloaded.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from engine.errors import LikenessError, TrainingCancelled
from engine.events import (
    EventSink,
    Log,
    OverfittingWarning,
    Phase,
    Progress,
    SampleReady,
    Started,
    ignore_events,
)
from engine.models.base_model import resolve_base
from engine.placement.cloud.client import ModalClient, RemoteCall
from engine.placement.executor import Executor
from engine.training.images import image_folder, list_image_files
from engine.training.run_dir import RunDir

# How long a stopped run may take to reach its next step boundary and commit before it is cancelled.
STOP_GRACE_S = 180.0
EVENT_POLL_S = 1.0


def dataset_key(folder: Path) -> str:
    """A content hash of ``folder``: names and bytes of every file, so the same photos upload once."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return f"ds-{digest.hexdigest()[:24]}"


def run_key(out: Path) -> str:
    """The run's folder in the runs volume: stable for one local run directory, across resumes."""
    resolved = out.expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", resolved.name).strip("-") or "run"
    return f"{slug}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


class ModalExecutor(Executor):
    """A Modal GPU, through a ``ModalClient`` (the real one unless one is given)."""

    where = "modal"

    def __init__(self, gpu: str, client: ModalClient | None = None):
        self.gpu = gpu
        self._client = client

    @property
    def client(self) -> ModalClient:
        if self._client is None:
            from engine.placement.cloud.client import ModalCloud

            self._client = ModalCloud()
        return self._client

    def train(self, config, settings, on_event: EventSink = ignore_events, step_hook=None):
        # 1. What can be checked here is checked here: a typo costs a second, not a container start.
        list_image_files(image_folder(config.data))
        run = RunDir(config.out)
        source = resolve_base(config.base, settings)
        if source.kind in ("folder", "single_file"):
            raise LikenessError(f"--base {config.base} is on this machine, where a Modal run cannot see it: "
                                "give a Hugging Face repo id, or train with --where local")
        client = self.client  # Modal installed, a token: before anything in the run folder is replaced
        recovered = run.recover_replaced()
        if recovered is not None:
            on_event(Log(recovered))
        if config.resume and not run.checkpoint_steps():
            raise LikenessError(f"--resume: {config.out} has no checkpoint to resume from")
        replacing = not config.resume and run.prepare_for_new_run(config.force)

        def under_way() -> None:
            # The container's first step: as locally, the run --force replaces goes only now.
            nonlocal replacing
            if replacing:
                run.discard_replaced()
                replacing = False

        try:
            return self._train(client, config, run, on_event, step_hook, under_way)
        except BaseException:
            if replacing:
                run.put_back_replaced()  # the new run never took a step: nothing of it is worth more
            raise

    def _train(self, client: ModalClient, config, run: RunDir, on_event: EventSink, step_hook, under_way):
        from engine.placement.cloud.remote import RemoteTrainRequest

        # 2. The dataset, once per content.
        key = dataset_key(config.data)
        if client.has_dataset(key):
            on_event(Log(f"dataset already on Modal ({key})"))
        else:
            on_event(Log(f"uploading the dataset to Modal ({key})"))
            client.upload_dataset(key, config.data)
        # 3. The run folder: empty for a new run; the local run (checkpoints and all) to resume one.
        remote_run = run_key(config.out)
        client.replace_run(remote_run, config.out if config.resume else None)

        request = RemoteTrainRequest(config=config.model_dump(mode="json"), dataset_key=key, run_key=remote_run,
                                     gpu=self.gpu)
        on_event(Log(f"starting on Modal ({self.gpu})"))
        call = client.start_training(request.model_dump(), self.gpu)
        try:
            self._follow(call, run, remote_run, on_event, step_hook, under_way)
            outcome = call.result()
        except TrainingCancelled:
            self._download(run, remote_run, config, key)
            raise
        except KeyboardInterrupt:
            call.cancel()
            raise
        except LikenessError:
            self._download(run, remote_run, config, key)
            raise
        except Exception as error:  # the container's own failure, re-raised by Modal
            self._download(run, remote_run, config, key)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LikenessError(f"the Modal run failed: {first}") from None
        finally:
            call.close()
        under_way()  # it ended well: the new run, even if no progress event came through
        self._download(run, remote_run, config, key)
        return _result(run, outcome)

    def _follow(self, call: RemoteCall, run: RunDir, remote_run: str, on_event: EventSink, step_hook,
                under_way) -> None:
        """Relay the container's events until it says it ended; cancel through ``step_hook``."""
        while True:
            message = call.next_event(timeout=EVENT_POLL_S)
            if message is None:
                continue
            kind = message["kind"]
            if kind == "end":
                return
            if kind == "progress":
                under_way()
                on_event(Progress(message["step"], message["total"], message["loss"], message["lr"],
                                  message["seconds_per_step"], message["eta_seconds"]))
                if step_hook is not None:
                    try:
                        step_hook(message["step"])
                    except TrainingCancelled:
                        self._stop(call)
                        raise
            elif kind == "sample":
                # The grid lands in the local run directory before anyone hears of it, as in a local run.
                local = run.root / message["path"]
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(self.client.read_run_file(remote_run, message["path"]))
                sidecar = message["path"].removesuffix(".png") + ".json"
                local.with_suffix(".json").write_bytes(self.client.read_run_file(remote_run, sidecar))
                on_event(SampleReady(message["step"], local, message["identity_score"], message.get("likeness"),
                                     message.get("memorisation"), message.get("variety"),
                                     message.get("recommended_step")))
            elif kind == "overfitting":
                on_event(OverfittingWarning(message["step"], message["cause"], message["message"]))
            elif kind == "started":
                on_event(Started(message["first_step"], message["total"]))
            elif kind == "phase":
                on_event(Phase(message["name"], message["index"], message["total"], message["fraction"]))
            else:
                on_event(Log(message["message"]))

    def _stop(self, call: RemoteCall) -> None:
        call.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            message = call.next_event(timeout=EVENT_POLL_S)
            if message is not None and message["kind"] == "end":
                return
        call.cancel()

    def _download(self, run: RunDir, remote_run: str, config, key: str) -> None:
        """Bring the run home, with this machine's paths in run.json (the container's mean nothing here)."""
        self.client.download_run(remote_run, run.root)
        record = run.read_run()
        if record is None:
            return
        remote_out = record["config"]["out"]
        record["config"] = {**record["config"], "data": str(config.data), "out": str(config.out),
                            "resume": config.resume, "force": config.force}
        record["remote"] = {"dataset_key": key, "run_key": remote_run}
        if str(record.get("dataset", "")).startswith(remote_out):
            record["dataset"] = str(config.out) + record["dataset"][len(remote_out):]
        elif "dataset" in record:
            record["dataset"] = str(config.data)
        run.write_run(record)


def _result(run: RunDir, outcome: dict):
    from engine.training.trainer import TrainResult

    record = run.read_run() or {}
    if outcome.get("status") != "done" or record.get("status") != "done":
        raise LikenessError(f"the Modal run ended with status {record.get('status', outcome.get('status'))!r}")
    return TrainResult(run.root, run.lora, record["steps_done"], record.get("final_loss"),
                       record.get("wall_time_s", 0.0), record.get("peak_memory_mb", 0.0))
