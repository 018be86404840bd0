"""Live run: the job it follows (any train job, picked at the top), what that job is doing, its newest
sample grid, the loss, likeness and memorisation curves, an overfitting warning, and its log; Cancel /
Resume, and Continue on Modal when a run outgrew this machine's memory."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, Log, ProgressBar, Select, Static

from engine.service.client import ended_words
from tui.messages import JobEvent
from tui.screens.base import EngineScreen
from tui.screens.confirm import Confirm
from tui.widgets.curves import LikenessCurves, curves_legend
from tui.widgets.picture import Picture

FINAL = ("done", "failed", "cancelled", "interrupted")
NO_JOB_YET = "no training job yet: start one on the Train screen (2)"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def job_label(job: dict) -> str:
    """'job 7 · runs/me · queued' for the job picker."""
    return f"job {job['id']} · {job.get('run_dir') or job['kind']} · {job['state']}"


class LiveRunScreen(EngineScreen):
    BINDINGS = [("left_square_bracket", "older", "Older grid"), ("right_square_bracket", "newer", "Newer grid"),
                Binding("f", "full_screen", "Full screen"), ("j", "pick_job", "Pick job"),
                ("c", "cancel", "Cancel"), ("r", "resume", "Resume"), ("m", "continue_on_modal", "Continue on Modal"),
                ("y", "copy_lora", "Copy LoRA path")]

    def __init__(self) -> None:
        super().__init__()
        self.job_id: int | None = None
        self.state: str | None = None  # the followed job's state, as its events tell it
        self.losses: list[float] = []
        self.grids: list[tuple[int, str]] = []  # (step, url) in the order they arrived
        self.shown = -1  # index into grids; -1 = follow the newest
        self.progress_text = ""  # the newest "step n/N loss … ETA" line
        self.lora_path: str | None = None  # the finished run's LoRA, as a full path on the engine's machine

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal():
            with Vertical(classes="panel side"):
                yield Label("Live run", classes="panel--title", id="title")
                yield Select([], prompt=NO_JOB_YET, id="job")
                with Horizontal(classes="buttons"):
                    yield Button("Cancel", variant="error", id="cancel", disabled=True)
                    yield Button("Resume", variant="success", id="resume", disabled=True)
                    modal = Button("Continue on Modal", variant="warning", id="modal", disabled=True)
                    modal.display = False  # only after a run ran out of memory here
                    yield modal
                yield ProgressBar(total=100, id="progress", show_eta=False)
                yield Static("no run yet: start one on the Train screen (2)", id="stats", classes="status")
                yield Static("", id="phase", classes="status")
                yield Static("", id="outputs", classes="status")
                warning = Static("", id="warning")
                warning.display = False  # only once the run looks overfit
                yield warning
                yield Static(curves_legend(), id="curves-legend", classes="status")
                yield LikenessCurves(id="curves")
                yield Log(id="log", max_lines=500)
            yield Picture("the newest sample grid appears here", id="grid")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        if self.job_id is None:
            self.call_engine(self.link.latest_train_job, self._adopt)

    def action_refresh(self) -> None:
        self.call_engine(self.link.jobs, self._show_jobs)

    def _show_jobs(self, jobs: list[dict]) -> None:
        trains = [job for job in jobs if job["kind"] == "train"]
        select = self.query_one("#job", Select)
        with self.prevent(Select.Changed):
            # The blank choice's words: "no training job yet" is wrong once there is one.
            select.prompt = "pick a training job" if trains else NO_JOB_YET
            select.set_options([(job_label(job), job["id"]) for job in trains])
            if self.job_id in {job["id"] for job in trains}:
                select.value = self.job_id

    def _adopt(self, job: dict | None) -> None:
        if job is not None and self.job_id is None:
            self.follow(job["id"])

    @on(Select.Changed, "#job")
    def _picked(self, event: Select.Changed) -> None:
        if isinstance(event.value, int) and event.value != self.job_id:
            self.follow(event.value)

    def action_pick_job(self) -> None:
        self.query_one("#job", Select).focus()
        self.query_one("#job", Select).action_show_overlay()

    def follow(self, job_id: int) -> None:
        """Watch ``job_id`` from its first event (the stream replays what already happened)."""
        self.job_id, self.state = job_id, None
        self.losses, self.grids, self.shown, self.progress_text = [], [], -1, ""
        # Nothing of the job followed before may stay on screen: its numbers are not this job's.
        self.query_one("#log", Log).clear()
        self.query_one("#curves", LikenessCurves).clear()
        self._warn("")
        self.query_one("#progress", ProgressBar).update(total=100, progress=0)
        self.query_one("#stats", Static).update(f"job {job_id}: asking the engine…")
        self.query_one("#phase", Static).update("")
        self.query_one("#outputs", Static).update("")
        self.lora_path = None
        self.refresh_bindings()
        self.query_one("#grid", Picture).show(None, "no sample grid yet for this job")
        self.query_one("#title", Label).update(f"Live run: job {job_id}")
        self.query_one("#resume", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        self._offer_modal(False)
        self.action_refresh()
        self.stream_job(job_id)

    def _log(self, line: str) -> None:
        self.query_one("#log", Log).write_line(line)

    @on(JobEvent)
    def job_event(self, event: JobEvent) -> None:
        if event.job_id != self.job_id:
            return
        data, stats = event.data, self.query_one("#stats", Static)
        if event.kind == "progress":
            self.query_one("#progress", ProgressBar).update(total=data["total"], progress=data["step"])
            if data.get("stage"):  # prep of a raw photo folder, before training starts
                stats.update(f"preparing photos: {data['stage']} {data['step']}/{data['total']}")
                return
            if data.get("loss") is not None:
                self.losses.append(data["loss"])
                self.query_one("#curves", LikenessCurves).add_loss(data["step"], data["loss"])
            loss = f"loss {data['loss']:.4f}  " if data.get("loss") is not None else ""
            self.progress_text = (f"step {data['step']}/{data['total']}  {loss}"
                                  f"{data.get('seconds_per_step', 0):.2f} s/step  "
                                  f"ETA {format_eta(data.get('eta_seconds'))} (sample grids included)")
            stats.update(f"running: {self.progress_text}")
        elif event.kind == "phase":
            text = data.get("text") or data.get("name", "")
            self.query_one("#phase", Static).update(text if data.get("name") != "training" else "")
            if data.get("name") == "sampling" and data.get("fraction") == 0.0:
                self._log(f"drawing sample grid {data.get('index')}/{data.get('total')}")
            elif data.get("name") in ("loading", "caching"):
                self._log(text)
            if data.get("name") == "sampling" and not self.progress_text:
                stats.update(f"running: {text} (before step 1)")
        elif event.kind == "started":
            self.query_one("#progress", ProgressBar).update(total=data["total"], progress=data["first_step"])
            self._log(f"steps {data['first_step'] + 1}–{data['total']}")
        elif event.kind == "sample_ready":
            self.grids.append((data["step"], data["url"]))
            curves = self.query_one("#curves", LikenessCurves)
            curves.add_sample(data["step"], data.get("likeness"), data.get("memorisation"))
            curves.recommend(data.get("recommended_step"))
            score = data.get("identity_score")
            self._log(f"sample grid at step {data['step']}" + (f" (face distance {score:.2f})" if score else ""))
            if self.shown == -1:
                self._show_grid(len(self.grids) - 1)
        elif event.kind == "overfitting":
            self._warn(data["message"])
            self._log(f"warning: {data['message']}")
        elif event.kind == "log":
            self._log(data.get("message", ""))
        elif event.kind in ("queued", "running"):  # a new attempt (the stream replays earlier ones first)
            self.state = event.kind
            self._log(f"job {event.kind} (attempt {data.get('attempt', 1)})")
            self.query_one("#cancel", Button).disabled = False
            self.query_one("#resume", Button).disabled = True
            self._offer_modal(False)
            if event.kind == "queued":
                job_id = self.job_id
                stats.update(f"job {job_id} queued")
                self.call_engine(lambda: self.link.waiting_for(job_id), self._show_waiting)
            else:
                stats.update("running: loading…")
            self.action_refresh()
        elif event.kind in FINAL:
            self.state = event.kind
            reason = data.get("reason") or ""
            ended = ended_words(event.kind, reason)
            self._log(f"job {ended}")
            self.query_one("#cancel", Button).disabled = True
            self.query_one("#resume", Button).disabled = event.kind == "done"
            self.query_one("#phase", Static).update("")
            if data.get("out_of_memory"):
                self._offer_modal(True)
                kept = data.get("checkpoint_step")
                reason = (f"ran out of memory here; Continue on Modal (m) carries on "
                          f"{f'from step {kept}' if kept else 'from the start'} on a cloud GPU")
            if event.kind == "failed":
                job_id = self.job_id
                self.call_engine(lambda: self.link.job_log(job_id), self._show_log_tail, lambda _error: None)
            if event.kind == "done" and (data.get("result") or {}).get("lora"):
                result = data["result"]
                self.call_engine(self.link.system, lambda system: self._show_outputs(result, system.get("home")))
            last = f" at {self.progress_text.split('  ETA')[0]}" if self.progress_text else ""
            # "cancelled at step 6/30." once, not "cancelled at step 6/30. cancelled at step 6"
            said = "" if reason.startswith(event.kind) else reason
            stats.update(f"{event.kind}{last}. {said}".strip())
            self.action_refresh()

    def _show_outputs(self, result: dict, home: str | None) -> None:
        """The run folder and LoRA as full paths: relative ones say nothing of where LIKENESS_HOME is."""
        from pathlib import Path

        def full(relative: str) -> str:
            return str(Path(home) / relative) if home else relative

        self.lora_path = full(result["lora"])
        folder = f"run folder: {full(result['run_dir'])}\n" if result.get("run_dir") else ""
        self.query_one("#outputs", Static).update(f"{folder}LoRA: {self.lora_path}  (y copies this path)")
        self.refresh_bindings()

    def action_copy_lora(self) -> None:
        if self.lora_path:
            # OSC 52: the terminal (tmux with set-clipboard, a browser under textual-serve) puts it on the clipboard.
            self.app.copy_to_clipboard(self.lora_path)
            self.notify(f"copied {self.lora_path}")

    def _show_waiting(self, ahead: int | None) -> None:
        if self.state == "queued":
            self.query_one("#stats", Static).update(
                f"job {self.job_id} queued behind job {ahead} (one GPU job at a time; j picks which job to watch)"
                if ahead else f"job {self.job_id} queued: starting…")

    def _show_log_tail(self, text: str) -> None:
        for line in text.strip().splitlines()[-15:]:
            self._log(line)

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
            if not (self.is_mounted and not self.query_one("#modal", Button).disabled):
                return False
        if action == "copy_lora" and not getattr(self, "lora_path", None):
            return False  # in the footer once a finished run has a LoRA to copy
        return super().check_action(action, parameters)

    def _show_grid(self, index: int) -> None:
        step, url = self.grids[index]
        self.call_engine(lambda: self.link.file_bytes(url),
                         lambda data: self.query_one("#grid", Picture).show(data))
        self.query_one("#title", Label).update(
            f"Live run: job {self.job_id} — sample grid at step {step} ({index + 1}/{len(self.grids)})")

    def action_full_screen(self) -> None:
        self.query_one("#grid", Picture).action_full_screen()

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
        if self.job_id is None or self.query_one("#cancel", Button).disabled:
            return
        job_id = self.job_id

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_engine(lambda: self.link.cancel(job_id),
                                 lambda _: self.notify("cancelling at the next step…"))

        self.app.push_screen(Confirm(f"Cancel job {job_id}? It stops at the next step and keeps a checkpoint "
                                     "there, so r resumes it from that step.", "cancel the job", "keep it running"),
                             answered)

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
