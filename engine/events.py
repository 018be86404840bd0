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
    likeness: float | None = None  # median face distance to the person (engine.training.sample_measures)
    memorisation: float | None = None  # 0..1: how close the pictures are to their nearest training photo
    variety: float | None = None  # median face distance between the grid's faces
    recommended_step: int | None = None  # the run's recommended step with this grid counted (engine.training.recommend)


@dataclass(frozen=True)
class OverfittingWarning:
    """The newest sample grid looks overfit (engine.training.recommend); ``message`` says what to do, in one line."""

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


@dataclass(frozen=True)
class Phase:
    """What a run is doing between steps, so a screen never shows "0%" for minutes of real work.

    ``name``: loading (the models), caching (latents and prompt embeddings), sampling (drawing sample
    grid ``index`` of ``total``; ``fraction`` of it is drawn so far), training (the steps).
    """

    name: str
    index: int = 0
    total: int = 0
    fraction: float | None = None

    def describe(self) -> str:
        """The phase in a few words, for a status line or a log."""
        if self.name == "sampling":
            done = f" {self.fraction:.0%}" if self.fraction is not None else ""
            return f"drawing sample grid {self.index}/{self.total}{done}"
        return {"loading": "loading the models", "caching": "caching latents and prompt embeddings",
                "training": "training"}.get(self.name, self.name)


Event = Progress | SampleReady | OverfittingWarning | Log | Started | Phase
EventSink = Callable[[Event], None]


def ignore_events(_event: Event) -> None:
    """The default sink: a library call that nobody watches."""
