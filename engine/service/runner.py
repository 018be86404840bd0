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
from typing import Any, BinaryIO

from engine.errors import LikenessError, TrainingCancelled
from engine.service import storage
from engine.service.catalog import LOGS, file_url, relative
from engine.service.errors import DatabaseBusy, NotFound
from engine.service.models import CPU_KINDS, FINAL_STATES, GPU_KINDS, Job
from engine.service.queue import JobQueue
from engine.service.worker_death import kernel_oom_kills, log_tail, worker_death
from engine.settings import Settings
from engine.training.run_dir import RunDir
from engine.training.stops import OutOfGpuMemory

INTERRUPTED_REASON = "the service stopped while this job ran; resume it to continue from its last checkpoint"


class JobInterrupted(BaseException):
    """The service is shutting down (SIGTERM): stop now; the job can be resumed later.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """


# -- the service side ------------------------------------------------------------------------

@dataclass
class _Worker:
    process: subprocess.Popen | _NoProcess
    job: Job
    slot: str
    log: str
    cancel_seen_at: float | None = None
    killed_for_cancel: bool = False
    ending: tuple[str, str] | None = None  # (state, reason) decided by the service, not the worker
    log_start: int = 0  # where this attempt's output begins in its job's log
    oom_kills_at_start: int | None = None  # the kernel's count of out-of-memory kills when it started


class JobRunner:
    """The service's scheduler thread: starts workers for queued jobs and reaps them.

    A dead worker is forgotten only once its end is on record. While the database cannot be
    written (a full disk, a read-only file) its slot stays taken and every poll tries again, so
    the job never stays `running` after the fault is gone and no second GPU job starts meanwhile.
    """

    def __init__(self, queue: JobQueue, settings: Settings, cancel_grace_s: float = 60.0, poll_s: float = 0.2,
                 worker_env: dict[str, str] | None = None):
        self.queue = queue
        self.home = settings.home
        self.cancel_grace_s = cancel_grace_s
        self.poll_s = poll_s
        self.worker_env = worker_env if worker_env is not None else worker_environment(os.environ)
        self._workers: dict[int, _Worker] = {}
        self._recovered = False
        self._problem: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Mark what a crash left running as interrupted, then start scheduling."""
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def _recover(self) -> bool:
        try:
            stale = self.queue.running_jobs()
            for job in stale:
                _end_stale_worker(job.worker_pid)
            ended = set(self.queue.interrupt_running(INTERRUPTED_REASON))
        except LikenessError as error:
            # A read-only or full database: start anyway (reads work) and try again at every poll; the
            # queue starts nothing while those rows still say running.
            self._report(error)
            return False
        self._recovered = True
        for job in stale:
            if job.id in ended:
                _settle_run_dir(job, "interrupted")
        return True

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
                _kill_group(worker.process)
                worker.process.wait()
        self._reap()
        try:
            self.queue.interrupt_running(INTERRUPTED_REASON)
        except LikenessError as error:  # the next start marks them interrupted
            self._report(error)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                # Nothing starts before what a crash left running is marked interrupted: a job started
                # first would be among the rows that marking ends.
                if not self._recovered and not self._recover():
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                self._reap()
                self._enforce_cancels()
                self._start_next()
            except LikenessError as error:  # a full disk or read-only database: one line, not a traceback a poll
                self._report(error)
            except Exception as error:  # the scheduler must outlive any one bad row or failed fork
                if repr(error) != self._problem:  # a traceback once, not one every poll
                    _say(traceback.format_exc())
                self._problem = repr(error)
            else:
                self._report(None)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _report(self, problem: Exception | None) -> None:
        """Say on the service's output when the queue stops and starts working again, once each."""
        text = str(problem) if problem is not None else None
        if text == self._problem:
            return
        if text is not None:
            _say(f"likeness service: {text}")
        elif self._problem is not None:
            _say("likeness service: the job database works again")
        self._problem = text

    def _start_next(self) -> None:
        busy = {worker.slot for worker in self._workers.values()}
        for slot, kinds in (("gpu", GPU_KINDS), ("cpu", CPU_KINDS)):
            if slot in busy or self._stop.is_set():
                continue
            job = self.queue.claim_next(kinds)
            if job is not None:
                self._spawn(job, slot)

    def _spawn(self, job: Job, slot: str) -> None:
        env = {**self.worker_env, "LIKENESS_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        try:
            log, handle = _open_log(self.home, job)
            with handle:
                handle.write(f"--- job {job.id} attempt {job.attempt}, {_now()}\n".encode())
                handle.flush()
                log_start = handle.tell()
                # A session of its own: Ctrl-C in the service's terminal reaches the service, which
                # then stops its workers cleanly, instead of killing them mid-write.
                process = subprocess.Popen(
                    [sys.executable, "-m", "engine.service.runner", str(job.id), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.home,
                    start_new_session=True)
        except OSError as error:
            reason = storage.disk_full_reason(self.home) if storage.is_disk_full(error) else (
                f"could not start a worker: {error}")
            # Kept as a dead worker until its end is on record: the reaper retries that at every poll.
            self._workers[job.id] = _Worker(_NoProcess(), job, slot, "", ending=("failed", reason))
            return
        self._workers[job.id] = _Worker(process, job, slot, log, log_start=log_start,
                                        oom_kills_at_start=kernel_oom_kills())
        self.queue.set_worker(job.id, process.pid, log)

    def _reap(self) -> None:
        for job_id, worker in list(self._workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            # Whatever the worker started (prep's pool workers, multiprocessing's resource tracker)
            # ends with it: they are in its process group, which outlives it while any of them does.
            _kill_group(worker.process)
            # A worker records its own ending; one that died without a word (killed, out of memory,
            # a crash in native code) is ended here.
            out_of_memory = False
            if worker.ending is not None:
                state, reason = worker.ending
            elif worker.killed_for_cancel:
                state, reason = "cancelled", "cancelled (killed: it did not reach a step boundary in time)"
            elif self._stop.is_set():
                state, reason = "interrupted", INTERRUPTED_REASON
            else:
                death = self._death(worker, code)
                state, reason = "failed", death.reason
                out_of_memory = death.out_of_memory and worker.job.kind == "train"
            data = {"reason": reason, **({"log": worker.log} if state == "failed" and worker.log else {})}
            if out_of_memory:
                # What a worker's own out-of-memory reports: the TUI offers Continue on Modal from here.
                data.update(out_of_memory=True, checkpoint_step=_last_checkpoint(worker.job))
            try:
                self.queue.finish(job_id, worker.job.attempt, state, error=reason, data=data)
                ended = self.queue.get(job_id)
            except NotFound:  # the database was deleted under us: there is no row left to end
                del self._workers[job_id]
                continue
            except LikenessError as error:
                self._report(error)  # kept: its slot stays taken, and the next poll tries again
                continue
            del self._workers[job_id]
            if ended.attempt == worker.job.attempt and ended.state in FINAL_STATES:
                _settle_run_dir(ended, "out_of_memory" if out_of_memory else ended.state)

    def _death(self, worker: _Worker, code: int):
        """Why ``worker`` died without a word: its log's last lines and the kernel's out-of-memory kills say."""
        tail = log_tail(self.home / worker.log, worker.log_start) if worker.log else ""
        now = kernel_oom_kills()
        before = worker.oom_kills_at_start
        return worker_death(code, tail, now - before if now is not None and before is not None else 0, worker.log)

    def _enforce_cancels(self) -> None:
        now = time.monotonic()
        for job_id, worker in self._workers.items():
            if worker.killed_for_cancel or worker.process.poll() is not None or not self.queue.cancel_requested(job_id):
                continue
            worker.cancel_seen_at = worker.cancel_seen_at or now
            if now - worker.cancel_seen_at > self.cancel_grace_s:
                worker.killed_for_cancel = True
                _kill_group(worker.process)


def _kill_group(process: subprocess.Popen | _NoProcess) -> None:
    """SIGKILL the worker's whole process group (its own session: its pid is the group's id)."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


class _NoProcess:
    """Stands for a worker that could not be started: it has already ended."""

    pid = None

    def poll(self) -> int:
        return -1

    def wait(self, _timeout: float | None = None) -> int:
        return -1

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


def worker_environment(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The service's environment less what a worker must not hold: the API's token (a worker talks
    to the database, never to the API, and a job's code or log must not be able to leak it)."""
    return {key: value for key, value in environ.items() if key not in _SERVICE_ONLY}


_SERVICE_ONLY = frozenset({"LIKENESS_TOKEN", "LIKENESS_TOKEN_FILE"})


def _open_log(home: Path, job: Job) -> tuple[str, BinaryIO]:
    """The job's log: a resumed attempt appends to its job's log, a new job always gets a new file,
    even when its id was used before (the database was deleted and ids started again at 1)."""
    folder = home / LOGS
    folder.mkdir(parents=True, exist_ok=True)
    if job.attempt > 1 and job.log and (home / job.log).is_file():
        return job.log, (home / job.log).open("ab")
    for n in range(1, 10_000):
        name = f"{LOGS}/job-{job.id:06d}.log" if n == 1 else f"{LOGS}/job-{job.id:06d}-{n}.log"
        try:
            return name, (home / name).open("xb")
        except FileExistsError:
            continue
    raise OSError(f"no free log name for job {job.id} in {folder}")


def _settle_run_dir(job: Job, state: str) -> None:
    """After a train job ended without its worker saying so (killed, crashed, service gone): remove
    what a cut-short write left, and make run.json say how the run ended instead of `running`."""
    if job.kind != "train" or not isinstance(job.config.get("out"), str):
        return
    run = RunDir(Path(job.config["out"]))
    try:
        storage.remove_partials(run.root)
        # A --force attempt that died before its first step: the run it was replacing comes back now, as
        # the trainer would have put it back had it lived (and that run's record is not this job's to mark).
        if run.recover_replaced() is not None:
            return
        record = run.read_run()
        if record is not None and record.get("status") == "running":
            run.write_run({**record, "status": state})
    except (OSError, LikenessError) as error:  # a full disk: run.json keeps its old word, the job's row has the truth
        _say(f"likeness service: could not update {run.run_json}: {error}")


def _last_checkpoint(job: Job) -> int | None:
    if not isinstance(job.config.get("out"), str):
        return None
    steps = RunDir(Path(job.config["out"])).checkpoint_steps()
    return steps[-1] if steps else None


def _say(line: str) -> None:
    """A line on the service's output, which may sit on the full disk itself: never raise."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


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

    # While another program holds the database's write lock, events wait here, in order, and a write
    # is tried again at most this often, so the training is not held up at every event meanwhile.
    BUSY_RETRY_S = 10.0

    def __init__(self, queue: JobQueue, job: Job, home: Path, cancel_on_progress: bool):
        self.queue = queue
        self.job = job
        self.home = home
        # Training checks at its step hook (after the checkpoint); generation and prep have no hook,
        # so they check after each progress event.
        self.cancel_on_progress = cancel_on_progress
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self._busy_since: float | None = None

    def _add(self, kind: str, data: dict[str, Any]) -> None:
        self.pending.append((kind, data))
        if self._busy_since is not None and time.monotonic() - self._busy_since < self.BUSY_RETRY_S:
            return
        try:
            self.flush()
        except DatabaseBusy as error:
            if self._busy_since is None:
                print(f"{_now()} {error}; the job goes on and its events wait until then", flush=True)
            self._busy_since = time.monotonic()

    def flush(self) -> None:
        """Write the events that waited for the database; DatabaseBusy if it is still locked."""
        while self.pending:
            self.queue.add_event(self.job.id, *self.pending[0])
            self.pending.pop(0)
        if self._busy_since is not None:
            print(f"{_now()} the job database takes writes again", flush=True)
        self._busy_since = None

    def __call__(self, event) -> None:
        from engine.events import Log, OverfittingWarning, Phase, Progress, SampleReady, Started

        if isinstance(event, Progress):
            self._add("progress", {
                "step": event.step, "total": event.total, "loss": event.loss, "lr": event.lr,
                "seconds_per_step": round(event.seconds_per_step, 4), "eta_seconds": round(event.eta_seconds, 1)})
            if self.cancel_on_progress:
                self.step_hook(event.step)
        elif isinstance(event, SampleReady):
            self._add("sample_ready", {
                "step": event.step, "path": relative(self.home, event.path), "url": file_url(self.home, event.path),
                "identity_score": event.identity_score, "likeness": event.likeness,
                "memorisation": event.memorisation, "variety": event.variety,
                "recommended_step": event.recommended_step})
        elif isinstance(event, OverfittingWarning):
            print(f"{_now()} {event.message}", flush=True)
            self._add("overfitting", {"step": event.step, "cause": event.cause, "message": event.message})
        elif isinstance(event, Started):
            started = {"first_step": event.first_step, "total": event.total}
            run_id = self._run_id()
            if run_id is not None:
                started["run_id"] = run_id  # which run this job's folder holds from now on (resume checks it)
            self._add("started", started)
        elif isinstance(event, Phase):
            self._add("phase", {"name": event.name, "index": event.index, "total": event.total,
                                "fraction": event.fraction, "text": event.describe()})
            if event.fraction is None:  # a new phase, not a grid's progress: worth a line in the job's log
                print(f"{_now()} {event.describe()}", flush=True)
        elif isinstance(event, Log):
            print(f"{_now()} {event.message}", flush=True)
            self._add("log", {"message": event.message})

    def placed(self, decision) -> None:
        """Where this attempt runs: on the job's row for lists (`likeness jobs`), and in its events."""
        on = f"{decision.where} ({decision.gpu or 'CPU'})"
        self._add("placed", {"where": decision.where, "gpu": decision.gpu, "on": on, "reason": decision.reason})

    def _run_id(self) -> str | None:
        if self.job.kind != "train" or not isinstance(self.job.config.get("out"), str):
            return None
        record = RunDir(Path(self.job.config["out"])).read_run() or {}
        return record.get("run_id") if isinstance(record.get("run_id"), str) else None

    def prep_progress(self, progress) -> None:
        self._add("progress", {"stage": progress.stage, "step": progress.done, "total": progress.total})
        self.step_hook(progress.done)

    def step_hook(self, step: int) -> None:
        try:
            cancel = self.queue.cancel_requested(self.job.id)
        except DatabaseBusy:
            cancel = False  # asked again at the next step
        if cancel:
            raise TrainingCancelled(f"cancelled at step {step}")


def _run_train(job: Job, settings: Settings, recorder: EventRecorder) -> dict[str, Any]:
    from engine.placement.decision import choose_executor, decide, model_family
    from engine.placement.gpus import detect_local_gpus
    from engine.training.config import TrainConfig

    config = TrainConfig.model_validate(job.config)
    # Placed as `likeness train --where W --gpu G` would: auto runs here when it fits this machine's
    # GPU, else on the cheapest Modal GPU that fits (the TUI shows this decision before submitting).
    look = job.where != "modal" and config.device != "cpu" and model_family(config) != "tiny"
    decision = decide(config, job.where, job.gpu, detect_local_gpus() if look else [])
    recorder.placed(decision)
    if decision.where != "local":
        recorder(_log(f"training on {decision.where} ({decision.gpu}): {decision.reason}"))
    result = choose_executor(decision).train(config, settings, recorder, recorder.step_hook)
    home = settings.home
    return {"run_dir": relative(home, result.run_dir), "lora": relative(home, result.lora_path),
            "lora_url": f"/runs/{result.run_dir.name}/lora", "steps": result.steps, "final_loss": result.final_loss,
            "wall_time_s": round(result.wall_time_s, 2), "peak_memory_mb": round(result.peak_memory_mb, 1)}


def _run_generate(job: Job, settings: Settings, recorder: EventRecorder) -> dict[str, Any]:
    from engine.generation.generator import GenerateConfig, generate

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
    from engine.service.config import ServiceConfig
    from engine.service.sqlite_queue import DB_FILENAME, SqliteJobQueue

    _exit_with_service(service_pid)

    def interrupt(_signum, _frame):
        raise JobInterrupted()

    signal.signal(signal.SIGTERM, interrupt)
    settings = Settings()
    home = settings.home
    # A short wait for another program's write lock: the recorder keeps the events meanwhile.
    queue = SqliteJobQueue(home / DB_FILENAME, busy_timeout_s=5)
    job = queue.get(job_id)
    log = job.log
    out = _LogWriter()
    recorder = EventRecorder(queue, job, home, cancel_on_progress=job.kind != "train")
    try:
        if job.kind == "train":
            _check_room(job, home, ServiceConfig().min_free_mb)
        result = _RUNS[job.kind](job, settings, recorder)
    except TrainingCancelled as stop:
        _record_end(queue, job, out, "cancelled", error=str(stop) or "cancelled", recorder=recorder)
        return 0
    except JobInterrupted:
        _record_end(queue, job, out, "interrupted", error=INTERRUPTED_REASON, recorder=recorder)
        return 0
    except Exception as error:
        data: dict[str, Any] = {"log": log}
        if storage.is_disk_full(error):
            # Told before anything is freed, so the number is the one the run met; then its
            # half-written files go, which also makes room for the log and the database.
            reason = storage.disk_full_reason(home)
            if job.kind == "train":
                storage.remove_partials(Path(job.config["out"]))
            out.write(traceback.format_exc())
        elif isinstance(error, LikenessError):
            reason = str(error)
            # Some failures carry what a screen needs to help (prep's per-photo verdicts and size hint).
            data.update(getattr(error, "event_data", dict)())
            if isinstance(error, OutOfGpuMemory):
                # Not a crash: the run is whole up to its last checkpoint. The event says so, and the TUI
                # offers to resume it on a cloud GPU (POST /jobs/{id}/resume {"where": "modal"}).
                data.update(out_of_memory=True, checkpoint_step=error.checkpoint_step)
        else:
            out.write(traceback.format_exc())
            first = (str(error).strip().splitlines() or [""])[0][:300]
            reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        out.write(f"{_now()} failed: {reason}\n")
        _record_end(queue, job, out, "failed", error=reason, data={"reason": reason, **data}, recorder=recorder)
        _settle_run_dir(job, "failed")  # the trainer's own last word may not have reached the disk
        return 1
    _record_end(queue, job, out, "done", result=result, data={"result": result}, recorder=recorder)
    return 0


def _check_room(job: Job, home: Path, reserve_mb: float) -> None:
    """Fail before loading anything when the run's checkpoints cannot fit (the disk may have filled
    since the job was submitted)."""
    from engine.training.config import TrainConfig

    problem = storage.room_problem(TrainConfig.model_validate(job.config), home, reserve_mb)
    if problem is not None:
        raise LikenessError(problem)


class _LogWriter:
    """Writes to the job's log (our stdout) without ever raising: what a full disk refuses is kept
    and written when there is room again, so the reason and traceback are not lost."""

    def __init__(self) -> None:
        self.pending = b""

    def write(self, text: str) -> None:
        self.pending += text.encode(errors="replace")
        self.flush()

    def flush(self) -> bool:
        try:
            sys.stdout.flush()  # what print() buffered goes first, in order
        except OSError:
            pass
        while self.pending:
            try:
                written = os.write(1, self.pending)
            except OSError:
                return False
            self.pending = self.pending[written:]
        return True


def _record_end(queue: JobQueue, job: Job, out: _LogWriter, state: str, error: str | None = None,
                result: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                recorder: EventRecorder | None = None) -> None:
    """Record how the attempt ended, trying until the database takes it (it may be full or read-only
    for a while): only this process knows the true ending, so it does not give up while its service
    lives (a service that dies takes this process with it, and its successor marks the job interrupted)."""
    delay, told = 0.2, False
    while True:
        out.flush()
        try:
            if recorder is not None:
                recorder.flush()  # the events that waited for a locked database come before the ending
            queue.finish(job.id, job.attempt, state, error=error, result=result, data=data)
        except LikenessError as problem:
            if not told:
                out.write(f"{_now()} cannot record that job {job.id} is {state} yet, retrying: {problem}\n")
                told = True
        else:
            # The log may still be waiting for room (the database had some, the log file none): a
            # while longer, so the traceback is not lost.
            for _ in range(150):
                if out.flush():
                    return
                time.sleep(0.2)
            return
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(run_job(int(sys.argv[1]), int(sys.argv[2])))
