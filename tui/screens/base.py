"""What every screen shares: a header and footer, engine calls off the UI thread, job event streams."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Checkbox, Footer, Header, Input, Select, TextArea
from textual.worker import Worker, WorkerState, get_current_worker

from tui.messages import EngineProblem, JobEvent


class EngineScreen(Screen):
    """A screen that talks to the engine through ``self.app.link`` without ever blocking the UI."""

    # Nothing focused on arrival: the screen keys (1-5, ?, q) work at once; tab enters the form.
    AUTO_FOCUS = ""

    def compose_frame(self) -> ComposeResult:
        from tui.widgets.screen_tabs import ScreenTabs

        yield Header()
        yield ScreenTabs(id="tabs")

    def compose_footer(self) -> ComposeResult:
        yield Footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The screen's own keys are single letters a form control may be meant to get: while one has
        # focus they do nothing (shown dimmed in the footer) until escape leaves it.
        if typing_in_form(self) and is_letter_action(self, action):
            return None
        return True

    @property
    def link(self):
        return self.app.link

    def on_screen_resume(self) -> None:
        """Each time the screen is shown, fetch what may have changed meanwhile (runs, datasets)."""
        refresh = getattr(self, "action_refresh", None)
        if refresh is not None:
            refresh()

    @work(thread=True, exit_on_error=False, group="engine-call")
    def call_engine(self, function: Callable[[], Any], then: Callable[[Any], None],
                    failed: Callable[[str], None] | None = None) -> None:
        """Run ``function`` in a thread; hand its result to ``then`` (or its one-line error to ``failed``)."""
        worker = get_current_worker()
        try:
            result = wait_or_abandon(function, worker)
        except Abandoned:
            return
        except Exception as error:
            if failed is None:
                raise  # the app's toast says it
            # Said once, where the screen says it: not again, rawer, in a toast.
            self.app.call_from_thread(failed, one_line(error))
            return
        self.app.call_from_thread(then, result)

    @work(thread=True, exclusive=True, exit_on_error=False, group="job-events")
    def stream_job(self, job_id: int) -> None:
        """Post every event of ``job_id`` to this screen until the job ends or another stream replaces it."""
        current = get_current_worker()
        events: queue.Queue = queue.Queue(maxsize=1000)

        def read() -> None:
            try:
                for item in self.link.events(job_id, should_stop=lambda: current.is_cancelled):
                    events.put(item)
            except Exception as error:  # handed to the worker, which reports it in the one place
                events.put(error)
            finally:
                events.put(None)

        # The blocking read (an event stream that may be quiet for minutes) is a daemon thread the
        # worker can walk away from; see wait_or_abandon.
        threading.Thread(target=read, name=f"job-{job_id}-events", daemon=True).start()
        while not current.is_cancelled:
            try:
                item = events.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            self.post_message(JobEvent(job_id, *item))

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.post_message(EngineProblem(one_line(event.worker.error)))


FORM_CONTROLS = (Input, Select, Checkbox, TextArea)


def typing_in_form(screen: Screen) -> bool:
    """Whether the focused widget is (inside) a field, a drop-down or a checkbox of a form."""
    focused = screen.focused
    return focused is not None and any(isinstance(node, FORM_CONTROLS) for node in focused.ancestors_with_self)


def is_letter_action(node: Widget | Screen, action: str) -> bool:
    """Whether ``node`` binds ``action`` to a key that types a character (s, 1, [ …), not to ctrl+…, tab or space."""
    return any(len(key) == 1 or key.endswith("_square_bracket") or key == "question_mark"
               for key, bindings in node._bindings.key_to_bindings.items()
               for binding in bindings if binding.action.split("(")[0] == action)


class Abandoned(Exception):
    """The worker was cancelled (the app is quitting) before the engine answered."""


def one_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def wait_or_abandon(function: Callable[[], Any], worker: Worker) -> Any:
    """``function()``, run in a daemon thread that is left behind if ``worker`` is cancelled first.

    Textual's thread workers run on asyncio's default executor, and on quitting ``asyncio.run`` waits
    for that executor (up to 300 s): one call stuck on an engine busy drawing a sample grid kept the
    terminal blank for minutes. Here the worker itself only waits, and stops waiting when cancelled.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = function()
        except BaseException as error:
            box["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name="engine-call", daemon=True).start()
    while not done.wait(0.1):
        if worker.is_cancelled:
            raise Abandoned()
    if "error" in box:
        raise box["error"]
    return box["result"]
