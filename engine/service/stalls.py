"""Saying on a job why nothing happens: a running job with no progress, a queued job and what it waits for.

A worker stopped with SIGSTOP (Ctrl-Z in a terminal that started it, a debugger, a container
paused) neither dies nor reports; without a word on its row it would look busy for good, and the
job queued behind it would wait with no reason given.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from engine.service.models import CPU_KINDS, GPU_KINDS, Job
from engine.service.queue import JobQueue

# A running job that sent no event for this long is said to make no progress even if its worker
# runs: the slowest phase (loading SDXL from a slow disk, one 1024 px grid on a CPU) takes minutes.
QUIET_S = 600.0


def with_notes(jobs: list[Job], queue: JobQueue) -> list[Job]:
    """`jobs` with `stalled` set on running jobs making no progress and `waiting` on queued ones."""
    if not any(job.state in ("running", "queued") for job in jobs):
        return jobs
    running = queue.running_jobs()
    notes = {job.id: stall_note(job, queue) for job in running}
    for job in jobs:
        if job.state == "running":
            job.stalled = notes.get(job.id)
        elif job.state == "queued":
            job.waiting = waiting_note(job, running, notes)
    return jobs


def stall_note(job: Job, queue: JobQueue) -> str | None:
    """'no progress for N s' and why, for a running job whose worker is stopped or silent, else None."""
    quiet = _seconds_since_last_event(job, queue)
    state = _process_state(job.worker_pid)
    if state in ("T", "t"):
        return (f"no progress for {quiet:.0f} s: its worker (process {job.worker_pid}) is stopped (SIGSTOP or "
                f"Ctrl-Z); 'kill -CONT {job.worker_pid}' lets it go on, cancel ends it")
    if quiet is not None and quiet >= QUIET_S:
        return f"no progress for {quiet:.0f} s"
    return None


def waiting_note(job: Job, running: list[Job], notes: dict[int, str | None]) -> str | None:
    """What a queued job waits for: the running job of its kind's slot, with that one's stall note."""
    kinds = GPU_KINDS if job.kind in GPU_KINDS else CPU_KINDS
    ahead = [other for other in running if other.kind in kinds]
    if not ahead:
        return None
    other = ahead[0]
    slot = "GPU (train and generate)" if kinds == GPU_KINDS else "prep"
    note = notes.get(other.id)
    return (f"waits for job {other.id} ({other.kind}, running) to end: one {slot} job runs at a time"
            + (f"; job {other.id} makes {note}" if note else ""))


def _seconds_since_last_event(job: Job, queue: JobQueue) -> float | None:
    events = queue.events(job.id, after=max(0, job.last_event_id - 1), limit=1)
    stamp = events[-1].time if events else job.started_at
    if not stamp:
        return None
    try:
        then = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - then).total_seconds())


def _process_state(pid: int | None) -> str | None:
    """The one-letter state Linux gives a process (R, S, D, T stopped, Z...), or None when unknown."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]
