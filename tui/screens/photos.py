"""Photos: choose a folder or .zip, run prep, see what was kept and why the rest was not."""

from __future__ import annotations

import re
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static

from tui.messages import JobEvent
from tui.screens.base import EngineScreen
from tui.widgets.picture import Picture


def dataset_name_for(path: Path) -> str:
    """A dataset name from a folder or zip name: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "photos"


class PhotosScreen(EngineScreen):
    BINDINGS = [("b", "browse", "Browse"), ("p", "prepare", "Prepare")]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Vertical(classes="panel"):
            yield Label("Photos: a folder or a .zip export", classes="panel--title")
            with Horizontal(classes="buttons"):
                yield Input(placeholder="/path/to/photos or export.zip", id="photos", classes="wide")
                yield Button("Browse…", id="browse")
            with Horizontal(classes="form"):
                yield Label("Dataset name")
                yield Input(placeholder="me", id="name")
                yield Label("Framing")
                yield Select([("face", "face"), ("head and shoulders", "head-and-shoulders")], value="face",
                             allow_blank=False, id="framing")
                yield Label("Min sharpness")
                yield Input("40", id="min_sharpness", type="number")
                yield Label("Max identity distance")
                yield Input("0.6", id="max_identity_distance", type="number")
                yield Label("Training size")
                yield Input("1024", id="size", type="integer")
            with Horizontal(classes="buttons"):
                yield Button("Prepare", variant="primary", id="prepare")
                yield ProgressBar(total=100, id="progress", show_eta=True)
            yield Static("", id="summary", classes="status")
        with Horizontal():
            yield Picture("the contact sheet appears here: kept photos first, then rejected ones with reasons",
                          id="sheet")
            yield DataTable(id="rejected", cursor_type="row")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        self.query_one("#rejected", DataTable).add_columns("photo", "why not")

    def action_browse(self) -> None:
        from tui.screens.folder_picker import FolderPicker

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.query_one("#photos", Input).value = str(path)
                name = self.query_one("#name", Input)
                if not name.value:
                    name.value = dataset_name_for(path)

        self.app.push_screen(FolderPicker(Path.home()), chosen)

    @on(Button.Pressed, "#browse")
    def browse_pressed(self) -> None:
        self.action_browse()

    @on(Button.Pressed, "#prepare")
    def action_prepare(self) -> None:
        photos = self.query_one("#photos", Input).value.strip()
        if not photos:
            self.notify("choose a photo folder or .zip first (b)", severity="warning")
            return
        name = self.query_one("#name", Input).value.strip() or dataset_name_for(Path(photos))
        options = {
            "framing": self.query_one("#framing", Select).value,
            "min_sharpness": float(self.query_one("#min_sharpness", Input).value or 40),
            "max_identity_distance": float(self.query_one("#max_identity_distance", Input).value or 0.6),
            "size": int(self.query_one("#size", Input).value or 1024),
        }
        self.dataset = name
        self.query_one("#summary", Static).update(f"preparing {photos} as dataset '{name}'…")
        self.call_engine(lambda: self.link.prepare(name, photos, options), self._started)

    def _started(self, job_id: str) -> None:
        self.stream_job(job_id)

    @on(JobEvent)
    def job_event(self, event: JobEvent) -> None:
        bar = self.query_one("#progress", ProgressBar)
        if event.kind == "progress":
            bar.update(total=event.data.get("total") or 100, progress=event.data.get("step", 0))
        elif event.kind == "log":
            self.query_one("#summary", Static).update(event.data.get("message", ""))
        elif event.kind == "done":
            bar.update(total=1, progress=1)
            self.call_engine(lambda: (self.link.dataset_manifest(self.dataset), self.link.dataset_report(self.dataset)),
                             self._show_result)
        elif event.kind in ("failed", "cancelled", "interrupted"):
            self.query_one("#summary", Static).update(f"prep {event.kind}: {event.data.get('reason', '')}")

    def _show_result(self, result: tuple[dict, bytes]) -> None:
        manifest, report = result
        rejected = manifest.get("rejected", {})
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
        self.query_one("#summary", Static).update(
            f"dataset '{self.dataset}': {manifest.get('accepted', 0)} kept, {sum(rejected.values())} rejected"
            + (f" ({reasons})" if reasons else ""))
        table = self.query_one("#rejected", DataTable)
        table.clear()
        for entry in manifest.get("entries", []):
            if entry.get("status") == "rejected":
                table.add_row(entry.get("source", "?"), entry.get("reason", "?"))
        self.query_one("#sheet", Picture).show(report)
