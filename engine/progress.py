"""The terminal face of a job's events: a progress bar with step, loss, s/step and ETA."""

from __future__ import annotations

import sys

from engine.events import Event, Log, OverfittingWarning, Phase, Progress, SampleReady, Started

# tqdm's own rate and time left count only the bar's updates, so a run that pauses for sample grids
# showed two rates and an ETA without the grids: the bar shows the engine's figures instead, which
# count the grids (engine.training.eta).
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class TerminalProgress:
    """An event sink that draws a tqdm bar on stderr and prints log lines and new sample grids."""

    def __init__(self, unit: str = "step", stream=None, header: str | None = None):
        self.unit = unit
        self.stream = stream or sys.stderr
        self.bar = None
        # Said when the work itself begins, so that a refused input's error stays the only line.
        self.header = header

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        if self.header and isinstance(event, (Started, Phase)):
            self._print(self.header)
            self.header = None
        if isinstance(event, Started):
            self.close()
            self.bar = tqdm(total=event.total, initial=event.first_step, unit=self.unit, file=self.stream,
                            dynamic_ncols=True, bar_format=BAR_FORMAT)
        elif isinstance(event, Progress):
            if self.bar is None:
                self.bar = tqdm(total=event.total, initial=event.step - 1, unit=self.unit, file=self.stream,
                                bar_format=BAR_FORMAT)
            loss = f"loss {event.loss:.4f}, " if event.loss is not None else ""
            left = f", {tqdm.format_interval(event.eta_seconds)} left" if event.step < event.total else ""
            self.bar.set_postfix_str(f"{loss}{event.seconds_per_step:.2f} s/{self.unit}{left}", refresh=False)
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, SampleReady):
            measured = "".join(f", {name} {value:.2f}" for name, value in (
                ("likeness", event.likeness), ("memorisation", event.memorisation)) if value is not None)
            self._print(f"sample grid for step {event.step}: {event.path}{measured}")
        elif isinstance(event, OverfittingWarning):
            self._print(f"warning: {event.message}")
        elif isinstance(event, Log):
            self._print(event.message)
        elif isinstance(event, Phase) and event.fraction in (None, 0.0) and event.name != "training":
            self._print(event.describe().replace(" 0%", "") + "…")

    def _print(self, message: str) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
