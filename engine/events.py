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
    likeness: float | None = None  # median face distance to the person (engine.sample_measures)
    memorisation: float | None = None  # 0..1: how close the pictures are to their nearest training photo
    variety: float | None = None  # median face distance between the grid's faces
    recommended_step: int | None = None  # the run's recommended step with this grid counted (engine.recommend)


@dataclass(frozen=True)
class OverfittingWarning:
    """The newest sample grid looks overfit (engine.recommend); ``message`` says what to do, in one line."""

    step: int
    cause: str  # "memorisation" or "likeness"
    message: str


@dataclass(frozen=True)
class Log:
    message: str


@dataclass(frozen=True)
class Started:
    """Sent once the models are loaded and the loop is about to start."""

    first_step: int
    total: int


Event = Progress | SampleReady | OverfittingWarning | Log | Started
EventSink = Callable[[Event], None]


def ignore_events(_event: Event) -> None:
    """The default sink: a library call that nobody watches."""
