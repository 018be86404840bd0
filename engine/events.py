"""What a running job reports: small dataclasses handed to an ``on_event`` callback.

The CLI turns them into a progress bar; the service (later) persists and streams them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float | None  # None where there is no loss (generation)
    lr: float | None
    seconds_per_step: float
    eta_seconds: float


@dataclass(frozen=True)
class SampleReady:
    step: int
    path: Path
    identity_score: float | None = None  # mean face distance to the person; None = no face / no identity


@dataclass(frozen=True)
class Log:
    message: str


@dataclass(frozen=True)
class Started:
    """Sent once the models are loaded and the loop is about to start."""

    first_step: int
    total: int


Event = Progress | SampleReady | Log | Started
EventSink = Callable[[Event], None]


def ignore_events(_event: Event) -> None:
    """The default sink: a library call that nobody watches."""
