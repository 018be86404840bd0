"""Runs the queue's jobs: one GPU job (train, generate) at a time, prep beside it on the CPU.

Each attempt runs in its own process (`python -m engine.service.runner JOB_ID SERVICE_PID`), so
a crash in training (out of memory, a segfault in a CUDA kernel) fails one job and never the
API. The worker writes its events straight into the queue's SQLite file and ends its own job;
the service only starts workers, notices the ones that died without a word, and kills a
cancelled one that has not reached a step boundary in time.

A worker exits as soon as the service that started it is gone (even killed with -9): the
service marks its job interrupted on its next start, and a new attempt resumes it from the last
checkpoint. Two writers of one run directory would corrupt it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import LikenessError, TrainingCancelled
from engine.placement import OutOfGpuMemory
from engine.service.catalog import LOGS, file_url, relative
from engine.service.models import CPU_KINDS, GPU_KINDS, Job
from engine.service.queue import JobQueue
from engine.settings import Settings

INTERRUPTED_REASON = "the service stopped while this job ran; resume it to continue from its last checkpoint"


class JobInterrupted(BaseException):
    """The service is shutting down (SIGTERM): stop now; the job can be resumed later.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """


# -- the service side ------------------------------------------------------------------------

@dataclass
class _Worker:
    process: subprocess.Popen
    job: Job
    slot: str
    log: str
    cancel_seen_at: float | None = None
    killed_for_cancel: bool = False


class JobRunner:
    """The service's scheduler thread: starts workers for queued jobs and reaps them."""

    def __init__(self, queue: JobQueue, settings: Settings, cancel_grace_s: float = 60.0, poll_s: float = 0.2):
        self.queue = queue
        self.home = settings.home
        self.cancel_grace_s = cancel_grace_s
        self.poll_s = poll_s
        self._workers: dict[int, _Worker] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Mark what a crash left running as interrupted, then start scheduling."""
        for job in self.queue.running_jobs():
            _end_stale_worker(job.worker_pid)
        self.queue.interrupt_running(INTERRUPTED_REASON)
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll (a job was submitted)."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop scheduling; ask running workers to stop (their jobs become interrupted)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for worker in self._workers.values():
            if worker.process.poll() is None:
                worker.process.terminate()  # SIGTERM: JobInterrupted in the worker, at once
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self._reap()
        self.queue.interrupt_running(INTERRUPTED_REASON)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._enforce_cancels()
                self._start_next()
            except Exception:  # the scheduler must outlive any one bad row or failed fork
                traceback.print_exc()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _start_next(self) -> None:
        busy = {worker.slot for worker in self._workers.values()}
        for slot, kinds in (("gpu", GPU_KINDS), ("cpu", CPU_KINDS)):
            if slot in busy or self._stop.is_set():
                continue
            job = self.queue.claim_next(kinds)
            if job is not None:
                self._spawn(job, slot)

    def _spawn(self, job: Job, slot: str) -> None:
        log = f"{LOGS}/job-{job.id:06d}.log"
        log_path = self.home / log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LIKENESS_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        try:
            with log_path.open("ab") as handle:
                handle.write(f"--- job {job.id} attempt {job.attempt}, {_now()}\n".encode())
                handle.flush()
                # A session of its own: Ctrl-C in the service's terminal reaches the service, which
                # then stops its workers cleanly, instead of killing them mid-write.
                process = subprocess.Popen(
                    [sys.executable, "-m", "engine.service.runner", str(job.id), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.home,
                    start_new_session=True)
        except OSError as error:
            self.queue.finish(job.id, job.attempt, "failed", error=f"could not start a worker: {error}",
                              data={"reason": f"could not start a worker: {error}", "log": log})
            return
        self.queue.set_worker(job.id, process.pid, log)
        self._workers[job.id] = _Worker(process, job, slot, log)

    def _reap(self) -> None:
        for job_id, worker in list(self._workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            del self._workers[job_id]
            # A worker records its own ending; one that died without a word (killed, out of memory,
            # a crash in native code) is ended here.
            if worker.killed_for_cancel:
                reason = "cancelled (killed: it did not reach a step boundary in time)"
                self.queue.finish(job_id, worker.job.attempt, "cancelled", error=reason, data={"reason": reason})
            elif self._stop.is_set():
                self.queue.finish(job_id, worker.job.attempt, "interrupted", error=INTERRUPTED_REASON)
            else:
                reason = f"the worker process died (exit code {code}); see {worker.log}"
                self.queue.finish(job_id, worker.job.attempt, "failed", error=reason,
                                  data={"reason": reason, "log": worker.log})

    def _enforce_cancels(self) -> None:
        now = time.monotonic()
        for job_id, worker in self._workers.items():
            if worker.killed_for_cancel or not self.queue.cancel_requested(job_id):
                continue
            worker.cancel_seen_at = worker.cancel_seen_at or now
            if now - worker.cancel_seen_at > self.cancel_grace_s:
                worker.killed_for_cancel = True
                worker.process.kill()


def _end_stale_worker(pid: int | None) -> None:
    """A worker of a service that died should exit within a second; make sure it has."""
    if not pid or not _is_worker(pid):
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _is_worker(pid):
        time.sleep(0.1)
    if _is_worker(pid):
        os.kill(pid, signal.SIGKILL)


def _is_worker(pid: int) -> bool:
    # Only a live process whose command line is ours: a recycled pid belongs to someone else.
    try:
        return b"engine.service.runner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# -- the worker side -------------------------------------------------------------------------

class EventRecorder:
    """An engine event sink that stores each event in the queue, and the step hook that cancels."""

    def __init__(self, queue: JobQueue, job: Job, home: Path, cancel_on_progress: bool):
        self.queue = queue
        self.job = job
        self.home = home
        # Training checks at its step hook (after the checkpoint); generation and prep have no hook,
        # so they check after each progress event.
        self.cancel_on_progress = cancel_on_progress

    def __call__(self, event) -> None:
        from engine.events import Log, Phase, Progress, SampleReady, Started

        if isinstance(event, Progress):
            self.queue.add_event(self.job.id, "progress", {
                "step": event.step, "total": event.total, "loss": event.loss, "lr": event.lr,
                "seconds_per_step": round(event.seconds_per_step, 4), "eta_seconds": round(event.eta_seconds, 1)})
            if self.cancel_on_progress:
                self.step_hook(event.step)
        elif isinstance(event, SampleReady):
            self.queue.add_event(self.job.id, "sample_ready", {
                "step": event.step, "path": relative(self.home, event.path), "url": file_url(self.home, event.path),
                "identity_score": event.identity_score})
        elif isinstance(event, Started):
            self.queue.add_event(self.job.id, "started", {"first_step": event.first_step, "total": event.total})
        elif isinstance(event, Phase):
            self.queue.add_event(self.job.id, "phase", {"name": event.name, "index": event.index,
                                                        "total": event.total, "fraction": event.fraction,
                                                        "text": event.describe()})
            if event.fraction is None:  # a new phase, not a grid's progress: worth a line in the job's log
                print(f"{_now()} {event.describe()}", flush=True)
        elif isinstance(event, Log):
            print(f"{_now()} {event.message}", flush=True)
            self.queue.add_event(self.job.id, "log", {"message": event.message})

    def prep_progress(self, progress) -> None:
        self.queue.add_event(self.job.id, "progress", {"stage": progress.stage, "step": progress.done,
                                                       "total": progress.total})
        self.step_hook(progress.done)

    def step_hook(self, step: int) -> None:
        if self.queue.cancel_requested(self.job.id):
            raise TrainingCancelled(f"cancelled at step {step}")


def _run_train(job: Job, settings: Settings, recorder: EventRecorder) -> dict[str, Any]:
    from engine.executors import choose_executor
    from engine.placement import decide, detect_local_gpus, model_family
    from engine.train_config import TrainConfig

    config = TrainConfig.model_validate(job.config)
    # Placed as `likeness train --where W --gpu G` would: auto runs here when it fits this machine's
    # GPU, else on the cheapest Modal GPU that fits (the TUI shows this decision before submitting).
    look = job.where != "modal" and config.device != "cpu" and model_family(config) != "tiny"
    decision = decide(config, job.where, job.gpu, detect_local_gpus() if look else [])
    if decision.where != "local":
        recorder(_log(f"training on {decision.where} ({decision.gpu}): {decision.reason}"))
    result = choose_executor(decision).train(config, settings, recorder, recorder.step_hook)
    home = settings.home
    return {"run_dir": relative(home, result.run_dir), "lora": relative(home, result.lora_path),
            "lora_url": f"/runs/{result.run_dir.name}/lora", "steps": result.steps, "final_loss": result.final_loss,
            "wall_time_s": round(result.wall_time_s, 2), "peak_memory_mb": round(result.peak_memory_mb, 1)}


def _run_generate(job: Job, settings: Settings, recorder: EventRecorder) -> dict[str, Any]:
    from engine.generate import GenerateConfig, generate

    result = generate(GenerateConfig.model_validate(job.config), settings, on_event=recorder)
    home = settings.home
    return {"out": relative(home, result.out),
            "images": [{"path": relative(home, i.path), "url": file_url(home, i.path)} for i in result.images],
            "grids": [{"path": relative(home, g), "url": file_url(home, g)} for g in result.grids]}


def _run_prep(job: Job, settings: Settings, recorder: EventRecorder) -> dict[str, Any]:
    from engine.prep import PrepConfig, prepare_photos

    report = prepare_photos(PrepConfig.model_validate(job.config), on_progress=recorder.prep_progress,
                            settings=settings)
    recorder(_log(report.summary()))
    return {**report.model_dump(mode="json"), "dataset": relative(settings.home, report.dataset)}


def _log(message: str):
    from engine.events import Log

    return Log(message)


_RUNS = {"train": _run_train, "generate": _run_generate, "prep": _run_prep}


def _exit_with_service(service_pid: int) -> None:
    """Exit the moment the service is gone: its successor marks this job interrupted."""

    def watch() -> None:
        while os.getppid() == service_pid:
            time.sleep(0.2)
        os._exit(3)  # no cleanup: a new service may already own this job's row and run directory

    threading.Thread(target=watch, name="service-watch", daemon=True).start()


def run_job(job_id: int, service_pid: int) -> int:
    """The worker: run one attempt of a job and record how it ended."""
    from engine.service.sqlite_queue import DB_FILENAME, SqliteJobQueue

    _exit_with_service(service_pid)

    def interrupt(_signum, _frame):
        raise JobInterrupted()

    signal.signal(signal.SIGTERM, interrupt)
    settings = Settings()
    queue = SqliteJobQueue(settings.home / DB_FILENAME)
    job = queue.get(job_id)
    log = job.log
    recorder = EventRecorder(queue, job, settings.home, cancel_on_progress=job.kind != "train")
    try:
        result = _RUNS[job.kind](job, settings, recorder)
    except TrainingCancelled as stop:
        queue.finish(job.id, job.attempt, "cancelled", error=str(stop) or "cancelled")
        return 0
    except JobInterrupted:
        queue.finish(job.id, job.attempt, "interrupted", error=INTERRUPTED_REASON)
        return 0
    except LikenessError as error:
        print(f"{_now()} failed: {error}", flush=True)
        data = {"reason": str(error), "log": log}
        # Some failures carry what a screen needs to help (prep's per-photo verdicts and size hint).
        data.update(getattr(error, "event_data", dict)())
        if isinstance(error, OutOfGpuMemory):
            # Not a crash: the run is whole up to its last checkpoint. The event says so, and the TUI
            # offers to resume it on a cloud GPU (POST /jobs/{id}/resume {"where": "modal"}).
            data.update(out_of_memory=True, checkpoint_step=error.checkpoint_step)
        queue.finish(job.id, job.attempt, "failed", error=str(error), data=data)
        return 1
    except Exception as error:
        traceback.print_exc()
        first = (str(error).strip().splitlines() or [""])[0][:300]
        reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        queue.finish(job.id, job.attempt, "failed", error=reason, data={"reason": reason, "log": log})
        return 1
    queue.finish(job.id, job.attempt, "done", result=result, data={"result": result})
    return 0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(run_job(int(sys.argv[1]), int(sys.argv[2])))
