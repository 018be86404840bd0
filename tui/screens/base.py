"""What every screen shares: a header and footer, engine calls off the UI thread, job event streams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState, get_current_worker

from tui.messages import EngineProblem, JobEvent


class EngineScreen(Screen):
    """A screen that talks to the engine through ``self.app.link`` without ever blocking the UI."""

    # Nothing focused on arrival: the screen keys (1-5, ?, q) work at once; tab enters the form.
    AUTO_FOCUS = ""

    def compose_frame(self) -> ComposeResult:
        yield Header()

    def compose_footer(self) -> ComposeResult:
        yield Footer()

    @property
    def link(self):
        return self.app.link

    def on_screen_resume(self) -> None:
        """Each time the screen is shown, fetch what may have changed meanwhile (runs, datasets)."""
        refresh = getattr(self, "action_refresh", None)
        if refresh is not None:
            refresh()

    @work(thread=True, exit_on_error=False, group="engine-call")
    def call_engine(self, function: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run ``function`` in a thread; hand its result to ``then`` on the UI thread."""
        result = function()
        self.app.call_from_thread(then, result)

    @work(thread=True, exclusive=True, exit_on_error=False, group="job-events")
    def stream_job(self, job_id: int) -> None:
        """Post every event of ``job_id`` to this screen until the job ends or another stream replaces it."""
        current = get_current_worker()
        for event_kind, data in self.link.events(job_id, should_stop=lambda: current.is_cancelled):
            self.post_message(JobEvent(job_id, event_kind, data))

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.post_message(EngineProblem(str(error).splitlines()[0] if str(error) else type(error).__name__))
