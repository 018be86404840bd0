"""A dialog that returns a folder or .zip chosen from a directory tree (or None when cancelled)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Label


class PhotoTree(DirectoryTree):
    """Folders and files without the hidden ones (dotfiles would bury the photo folders)."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [path for path in paths if not path.name.startswith(".")]


class FolderPicker(ModalScreen[Path | None]):
    DEFAULT_CSS = """
    FolderPicker { align: center middle; }
    FolderPicker > Vertical { width: 80%; height: 80%; border: thick $primary; background: $surface; }
    FolderPicker DirectoryTree { height: 1fr; }
    FolderPicker Horizontal { height: auto; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"),
                Binding("backspace", "up", "Parent folder"), Binding("ctrl+r", "root", "Top of the disk")]

    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start
        self.chosen: Path = start

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Choose a photo folder or a .zip export (enter opens, then Use; backspace: the "
                        "parent folder, ctrl+r: the top of the disk, where other disks are mounted)")
            yield PhotoTree(self.start, id="tree")
            yield Label(str(self.start), id="chosen")
            with Horizontal():
                yield Button("Use", variant="primary", id="use")
                yield Button("Cancel", id="cancel")

    @on(DirectoryTree.DirectorySelected)
    @on(DirectoryTree.FileSelected)
    def remember(self, event: DirectoryTree.DirectorySelected | DirectoryTree.FileSelected) -> None:
        self.chosen = Path(event.path)
        self.query_one("#chosen", Label).update(str(self.chosen))

    def action_up(self) -> None:
        self._open(self.query_one("#tree", DirectoryTree).path.parent)

    def action_root(self) -> None:
        self._open(Path(self.query_one("#tree", DirectoryTree).path).anchor or "/")

    def _open(self, folder: Path) -> None:
        tree = self.query_one("#tree", DirectoryTree)
        tree.path = Path(folder)
        self.chosen = Path(folder)
        self.query_one("#chosen", Label).update(str(self.chosen))

    @on(Button.Pressed, "#use")
    def use(self) -> None:
        self.dismiss(self.chosen)

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)
