"""Where a run executes: one small interface, two implementations, chosen in one place.

``LocalExecutor`` calls ``engine.training.trainer.train`` here; ``ModalExecutor`` (engine.placement.cloud.executor) has a
Modal function call that same entry point on a cloud GPU and makes the run directory here look as if
it had run here. Callers (the CLI, the service, the TUI) steer both the same way: events come back
through ``on_event``, and ``step_hook`` may raise ``TrainingCancelled`` to stop at a step boundary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from engine.events import EventSink, ignore_events

if TYPE_CHECKING:
    from engine.settings import Settings
    from engine.training.config import TrainConfig
    from engine.training.trainer import StepHook, TrainResult


class Executor(ABC):
    """Runs training jobs somewhere and leaves each run directory complete on this machine."""

    where: str

    @abstractmethod
    def train(self, config: TrainConfig, settings: Settings, on_event: EventSink = ignore_events,
              step_hook: StepHook | None = None) -> TrainResult:
        """Train as ``config`` says; report through ``on_event``; ``step_hook(step)`` may cancel."""


class LocalExecutor(Executor):
    """This machine: the trainer in this process."""

    where = "local"

    def train(self, config, settings, on_event=ignore_events, step_hook=None):
        from engine.training.trainer import train

        return train(config, settings, on_event, step_hook)
