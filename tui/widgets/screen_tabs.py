"""The line under the header that names every screen, marks the one shown, and switches on a click."""

from __future__ import annotations

from textual.widgets import Static

SCREEN_TITLES = {
    "photos": "Photos",
    "train": "Train",
    "live": "Live run",
    "generate": "Generate",
    "runs": "Runs",
}


def tabs_markup(current: str | None) -> str:
    """'1 Photos  2 Train …' with the current screen highlighted and each name a link to its screen."""
    tabs = []
    for number, (mode, title) in enumerate(SCREEN_TITLES.items(), start=1):
        label = f" {number} {title} "
        style = "reverse bold" if mode == current else "bold"
        tabs.append(f"[{style}][@click=app.switch_mode('{mode}')]{label}[/][/]")
    # The footer shows 1-5 only while no text field has the keys; this line is there whatever has focus.
    return "│".join(tabs) + "   [dim]escape leaves a field, then 1-5 switch screens · ? help[/]"


class ScreenTabs(Static):
    """Where the other screens are, on every screen whatever has focus (the footer hides keys a field takes)."""

    DEFAULT_CSS = """
    ScreenTabs { height: 1; background: $panel; color: $text; }
    """

    def on_mount(self) -> None:
        modes = getattr(self.app, "MODES", {})
        current = next((mode for mode, screen in modes.items() if isinstance(self.screen, screen)), None)
        self.update(tabs_markup(current))
