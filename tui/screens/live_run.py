"""Live run: progress, the loss, likeness and memorisation curves, an overfitting warning, the newest
sample grid the moment it is written, the log; Cancel / Resume, and Continue on Modal when a run
outgrew this machine's memory."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, Log, ProgressBar, Static

from tui.messages import JobEvent
from tui.screens.base import EngineScreen
from tui.widgets.curves import LikenessCurves
from tui.widgets.picture import Picture


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class LiveRunScreen(EngineScreen):
    BINDINGS = [("left_square_bracket", "older", "Older grid"), ("right_square_bracket", "newer", "Newer grid"),
                ("c", "cancel", "Cancel"), ("r", "resume", "Resume"), ("m", "continue_on_modal", "Continue on Modal")]

    def __init__(self) -> None:
        super().__init__()
        self.job_id: int | None = None
        self.losses: list[float] = []
        self.grids: list[tuple[int, str]] = []  # (step, url) in the order they arrived
        self.shown = -1  # index into grids; -1 = follow the newest

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Vertical(classes="panel"):
            yield Label("Live run", classes="panel--title", id="title")
            with Horizontal(classes="buttons"):
                yield ProgressBar(total=100, id="progress", show_eta=False)
                yield Button("Cancel", variant="error", id="cancel")
                yield Button("Resume", variant="success", id="resume", disabled=True)
                modal = Button("Continue on Modal", variant="warning", id="modal", disabled=True)
                modal.display = False  # only after a run ran out of memory here
                yield modal
            yield Static("no run yet: start one on the Train screen (2)", id="stats", classes="status")
            warning = Static("", id="warning")
            warning.display = False  # only once the run looks overfit
            yield warning
            yield LikenessCurves(id="curves")
        yield Picture("the newest sample grid appears here", id="grid")
        yield Log(id="log", max_lines=500)
        yield from self.compose_footer()

    def on_mount(self) -> None:
        if self.job_id is None:
            self.call_engine(self.link.latest_train_job, self._adopt)

    def _adopt(self, job: dict | None) -> None:
        if job is not None and self.job_id is None:
            self.follow(job["id"])

    def follow(self, job_id: int) -> None:
        """Watch ``job_id`` from its first event (the stream replays what already happened)."""
        self.job_id = job_id
        self.losses, self.grids, self.shown = [], [], -1
        self.query_one("#log", Log).clear()
        self.query_one("#curves", LikenessCurves).clear()
        self._warn("")
        self.query_one("#title", Label).update(f"Live run: job {job_id}")
        self.query_one("#resume", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        self._offer_modal(False)
        self.stream_job(job_id)

    @on(JobEvent)
    def job_event(self, event: JobEvent) -> None:
        if event.job_id != self.job_id:
            return
        data = event.data
        if event.kind == "progress":
            self.query_one("#progress", ProgressBar).update(total=data["total"], progress=data["step"])
            if data.get("stage"):  # prep of a raw photo folder, before training starts
                self.query_one("#stats", Static).update(f"{data['stage']} photos {data['step']}/{data['total']}")
                return
            if data.get("loss") is not None:
                self.losses.append(data["loss"])
                self.query_one("#curves", LikenessCurves).add_loss(data["step"], data["loss"])
            loss = f"loss {data['loss']:.4f}  " if data.get("loss") is not None else ""
            self.query_one("#stats", Static).update(
                f"step {data['step']}/{data['total']}  {loss}{data.get('seconds_per_step', 0):.2f} s/step  "
                f"ETA {format_eta(data.get('eta_seconds'))}")
        elif event.kind == "sample_ready":
            self.grids.append((data["step"], data["url"]))
            curves = self.query_one("#curves", LikenessCurves)
            curves.add_sample(data["step"], data.get("likeness"), data.get("memorisation"))
            curves.recommend(data.get("recommended_step"))
            if self.shown == -1:
                self._show_grid(len(self.grids) - 1)
        elif event.kind == "overfitting":
            self._warn(data["message"])
            self.query_one("#log", Log).write_line(f"warning: {data['message']}")
        elif event.kind == "log":
            self.query_one("#log", Log).write_line(data.get("message", ""))
        elif event.kind in ("queued", "running"):  # a new attempt (the stream replays earlier ones first)
            self.query_one("#cancel", Button).disabled = False
            self.query_one("#resume", Button).disabled = True
            self._offer_modal(False)
        elif event.kind in ("done", "failed", "cancelled", "interrupted"):
            reason = data.get("reason") or ""
            self.query_one("#log", Log).write_line(f"job {event.kind} {reason}".rstrip())
            self.query_one("#cancel", Button).disabled = True
            self.query_one("#resume", Button).disabled = event.kind == "done"
            if data.get("out_of_memory"):
                self._offer_modal(True)
                kept = data.get("checkpoint_step")
                reason = (f"ran out of memory here; Continue on Modal (m) carries on "
                          f"{f'from step {kept}' if kept else 'from the start'} on a cloud GPU")
            self.query_one("#stats", Static).update(f"{event.kind}. {reason}".strip())

    def _warn(self, message: str) -> None:
        warning = self.query_one("#warning", Static)
        warning.update(f"⚠ {message}" if message else "")
        warning.display = bool(message)

    def _offer_modal(self, offer: bool) -> None:
        button = self.query_one("#modal", Button)
        button.display, button.disabled = offer, not offer
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The footer shows `m` only while there is a run to carry on in the cloud.
        if action == "continue_on_modal":
            return not self.query_one("#modal", Button).disabled if self.is_mounted else False
        return True

    def _show_grid(self, index: int) -> None:
        step, url = self.grids[index]
        self.call_engine(lambda: self.link.file_bytes(url),
                         lambda data: self.query_one("#grid", Picture).show(data))
        self.query_one("#title", Label).update(
            f"Live run: job {self.job_id} — sample grid at step {step} ({index + 1}/{len(self.grids)})")

    def action_older(self) -> None:
        if self.grids:
            index = (len(self.grids) - 1 if self.shown == -1 else self.shown) - 1
            self.shown = max(0, index)
            self._show_grid(self.shown)

    def action_newer(self) -> None:
        if self.grids:
            index = (len(self.grids) - 1 if self.shown == -1 else self.shown) + 1
            self.shown = -1 if index >= len(self.grids) - 1 else index
            self._show_grid(len(self.grids) - 1 if self.shown == -1 else self.shown)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if self.job_id is not None:
            job_id = self.job_id
            self.call_engine(lambda: self.link.cancel(job_id), lambda _: self.notify("cancelling at the next step…"))

    @on(Button.Pressed, "#resume")
    def action_resume(self) -> None:
        if self.job_id is not None:
            job_id = self.job_id
            self.call_engine(lambda: self.link.resume(job_id), self.follow)

    @on(Button.Pressed, "#modal")
    def action_continue_on_modal(self) -> None:
        if self.job_id is not None and not self.query_one("#modal", Button).disabled:
            job_id = self.job_id
            self.notify("continuing on a Modal GPU…")
            self.call_engine(lambda: self.link.resume(job_id, where="modal"), self.follow)
