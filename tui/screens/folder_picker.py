"""A dialog that returns a folder or .zip chosen from a directory tree (or None when cancelled)."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Label


class FolderPicker(ModalScreen[Path | None]):
    DEFAULT_CSS = """
    FolderPicker { align: center middle; }
    FolderPicker > Vertical { width: 80%; height: 80%; border: thick $primary; background: $surface; }
    FolderPicker DirectoryTree { height: 1fr; }
    FolderPicker Horizontal { height: auto; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start
        self.chosen: Path = start

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Choose a photo folder or a .zip export (enter opens, then Use)")
            yield DirectoryTree(self.start, id="tree")
            yield Label(str(self.start), id="chosen")
            with Horizontal():
                yield Button("Use", variant="primary", id="use")
                yield Button("Cancel", id="cancel")

    @on(DirectoryTree.DirectorySelected)
    @on(DirectoryTree.FileSelected)
    def remember(self, event: DirectoryTree.DirectorySelected | DirectoryTree.FileSelected) -> None:
        self.chosen = Path(event.path)
        self.query_one("#chosen", Label).update(str(self.chosen))

    @on(Button.Pressed, "#use")
    def use(self) -> None:
        self.dismiss(self.chosen)

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)
