"""The likeness TUI: five screens over the engine service, switched with 1-5."""

from __future__ import annotations

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.engine_link import EngineLink
from tui.messages import EngineProblem
from tui.screens.base import typing_in_form
from tui.widgets.screen_tabs import SCREEN_TITLES


class ScreenCommands(Provider):
    """Command-palette entries: go to any screen by name, listed before anything is typed."""

    async def discover(self) -> Hits:
        for mode, title in SCREEN_TITLES.items():
            yield DiscoveryHit(f"Go to {title}", lambda mode=mode: self.app.switch_mode(mode),
                               help=f"Open the {title} screen")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for mode, title in SCREEN_TITLES.items():
            score = matcher.match(f"Go to {title}")
            if score > 0:
                yield Hit(score, matcher.highlight(f"Go to {title}"),
                          lambda mode=mode: self.app.switch_mode(mode), help=f"Open the {title} screen")


class LikenessApp(App):
    """Keyboard first: 1-5 switch screens, ? opens help, ctrl+p the command palette, q quits."""

    CSS_PATH = "likeness.tcss"
    TITLE = "likeness"
    COMMANDS = App.COMMANDS | {ScreenCommands}
    BINDINGS = [
        Binding("1", "switch_mode('photos')", "Photos"),
        Binding("2", "switch_mode('train')", "Train"),
        Binding("3", "switch_mode('live')", "Live run"),
        Binding("4", "switch_mode('generate')", "Generate"),
        Binding("5", "switch_mode('runs')", "Runs"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("escape", "leave_field", "Leave field", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, link: EngineLink) -> None:
        from tui.screens.generate import GenerateScreen
        from tui.screens.live_run import LiveRunScreen
        from tui.screens.photos import PhotosScreen
        from tui.screens.runs import RunsScreen
        from tui.screens.train import TrainScreen

        self.MODES = {"photos": PhotosScreen, "train": TrainScreen, "live": LiveRunScreen,
                      "generate": GenerateScreen, "runs": RunsScreen}
        super().__init__()
        self.link = link

    def on_mount(self) -> None:
        self.switch_mode("photos")
        self.announce_jobs_going_on()

    @work(thread=True, exit_on_error=False, group="announce")
    def announce_jobs_going_on(self) -> None:
        """Reopened while a job runs (it outlives the TUI): say so at once, and where to watch it."""
        from tui.engine_link import job_status

        jobs = self.link.going_on()
        if jobs:
            where = "Live run (3) follows it" if jobs[0]["kind"] == "train" else "`likeness jobs` lists it"
            self.call_from_thread(self.notify, f"{job_status(jobs[0])}: {where}", timeout=15)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # 1-5 and q are letters a form control may be meant to get: while one has focus they do
        # nothing (shown dimmed); escape leaves it, and the tab line's names can be clicked.
        if action in ("switch_mode", "quit") and typing_in_form(self.screen):
            return None
        return True

    def action_leave_field(self) -> None:
        """Escape leaves a text field, so the screen keys work again."""
        self.screen.set_focus(None)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    async def watch_job(self, job_id: int) -> None:
        """Open the Live run screen on ``job_id`` (after Train starts a run)."""
        await self.switch_mode("live")
        self.screen.follow(job_id)

    @on(EngineProblem)
    def show_problem(self, message: EngineProblem) -> None:
        self.notify(message.text, severity="error", timeout=8)
