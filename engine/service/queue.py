"""The job queue's interface: what the API and the workers may ask of it, whatever stores it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from engine.placement.decision import Where
from engine.service.models import Job, JobEvent, JobKind


class JobQueue(ABC):
    """Jobs first in, first out, with their events; every state change is also an event."""

    @abstractmethod
    def submit(self, kind: JobKind, config: dict[str, Any], run_dir: str | None,
               where: Where = "auto", gpu: str | None = None) -> Job:
        """Store a new job as queued; train jobs run where `where` and `gpu` say."""

    @abstractmethod
    def get(self, job_id: int) -> Job:
        """The job with this id; raises NotFound."""

    @abstractmethod
    def list(self, state: str | None = None, kind: str | None = None) -> list[Job]:
        """Jobs, newest first, optionally of one state and kind."""

    @abstractmethod
    def active_run_dirs(self) -> set[str]:
        """Run directories of the jobs that are queued or running."""

    @abstractmethod
    def claim_next(self, kinds: tuple[JobKind, ...]) -> Job | None:
        """Move the oldest queued job of these kinds to running, or return None."""

    @abstractmethod
    def set_worker(self, job_id: int, pid: int, log: str) -> None:
        """Record the process that runs the job and the log file it writes."""

    @abstractmethod
    def finish(self, job_id: int, attempt: int, state: str, error: str | None = None,
               result: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> bool:
        """End that attempt of a running job in a final state; False if it was no longer running."""

    @abstractmethod
    def request_cancel(self, job_id: int) -> Job:
        """Cancel a queued job now, or flag a running one to stop at its next step boundary."""

    @abstractmethod
    def cancel_requested(self, job_id: int) -> bool:
        """Whether the job's stop flag is set (the worker's step hook polls this)."""

    @abstractmethod
    def requeue(self, job_id: int, config: dict[str, Any], where: Where | None = None,
                gpu: str | None = None) -> Job:
        """Queue a new attempt of a finished job with this config (resume); None keeps its placement."""

    @abstractmethod
    def running_jobs(self) -> list[Job]:
        """Jobs in the running state."""

    @abstractmethod
    def interrupt_running(self, reason: str) -> list[int]:
        """Mark every running job interrupted (after a crash or on shutdown); return their ids."""

    @abstractmethod
    def add_event(self, job_id: int, type: str, data: dict[str, Any] | None = None) -> JobEvent:
        """Append an event to the job's stream."""

    @abstractmethod
    def events(self, job_id: int, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        """The job's events with ids above `after`, oldest first."""
