"""Messages the TUI's workers post up to screens: small dataclasses, newest progress wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class JobEvent(Message):
    """One event of a job, as the engine service streams it."""

    job_id: int
    kind: str  # progress, sample_ready, log, done, failed, cancelled, interrupted, ...
    data: dict[str, Any]

    def can_replace(self, message: Message) -> bool:
        # A flood of progress events collapses to the newest; every other event is kept.
        return (isinstance(message, JobEvent) and message.job_id == self.job_id
                and message.kind == self.kind == "progress")


@dataclass
class EngineProblem(Message):
    """The engine could not be reached or refused a request; shown to the user as one line."""

    text: str
