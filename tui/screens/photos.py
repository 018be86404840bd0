"""Photos: choose a folder or .zip, run prep, see what was kept and why the rest was not."""

from __future__ import annotations

import re
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static

from engine.service.client import ended_words
from tui.field_words import in_form_words
from tui.messages import JobEvent
from tui.screens.base import EngineScreen
from tui.widgets.picture import Picture


def dataset_name_for(path: Path) -> str:
    """A dataset name from a folder or zip name: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "photos"


def verdict_rows(entries: list[dict]) -> list[tuple[str, str, str]]:
    """(photo, kept or rejected, why) for every file prep looked at, rejected ones first."""
    rows = [(e.get("source", "?"), "kept" if e.get("status") == "accepted" else "rejected",
             " · ".join(str(part) for part in (e.get("reason"), e.get("detail")) if part))
            for e in entries]
    return sorted(rows, key=lambda row: row[1] == "kept")


# The engine's names for the form's fields, for its refusals.
LABELS = {"name": "Dataset name", "framing": "Framing", "min_sharpness": "Min sharpness",
          "max_identity_distance": "Max identity distance", "size": "Training size", "photos": "Photos"}


class PhotosScreen(EngineScreen):
    BINDINGS = [("b", "browse", "Browse"), ("p", "prepare", "Prepare"), ("u", "use_hint", "Use the size hint")]

    def __init__(self) -> None:
        super().__init__()
        self.hint_size: int | None = None
        self.job_id: int | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Vertical(classes="panel"):
            yield Label("Photos: a folder or a .zip export", classes="panel--title")
            with Horizontal(classes="buttons"):
                yield Input(placeholder="/path/to/photos or export.zip", id="photos", classes="wide")
                yield Button("Browse…", id="browse")
            with Horizontal(classes="form"):
                yield Label("Dataset name")
                yield Input(placeholder="named after the folder", id="name")
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
                hint = Button("", variant="warning", id="use-hint")
                hint.display = False  # only when a smaller size would keep photos rejected as too small
                yield hint
                yield ProgressBar(total=100, id="progress", show_eta=True)
            yield Static("type or paste a path and press enter to prepare it (b browses; escape leaves a field, "
                         "so 1-5 switch screens)", id="summary", classes="status")
        with Horizontal():
            with Vertical(id="verdicts"):
                yield DataTable(id="rejected", cursor_type="row")
                # The table is narrow beside the sheet: the highlighted row in full, wrapped.
                yield Static("", id="verdict", classes="status")
            yield Picture("the contact sheet appears here: kept photos first, then rejected ones with reasons",
                          id="sheet")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        # The first thing a newcomer does is type or paste a path: keys go there, not to the shortcuts
        # (Escape leaves the field; Enter prepares and leaves it).
        self.query_one("#photos", Input).focus()
        self.query_one("#rejected", DataTable).add_columns("photo", "verdict", "why")

    @on(Input.Changed, "#photos")
    def photos_changed(self, event: Input.Changed) -> None:
        # The placeholder shows the name an empty field will give the dataset, not an example.
        path = event.value.strip()
        self.query_one("#name", Input).placeholder = (dataset_name_for(Path(path)) if path
                                                      else "named after the folder")

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

    @on(Input.Submitted, "#photos")
    @on(Button.Pressed, "#prepare")
    def action_prepare(self) -> None:
        photos = self.query_one("#photos", Input).value.strip()
        if not photos:
            self.notify("choose a photo folder or .zip first (b)", severity="warning")
            return
        name = self.query_one("#name", Input).value.strip() or dataset_name_for(Path(photos))
        try:
            options = {
                "framing": self.query_one("#framing", Select).value,
                "min_sharpness": self._number("min_sharpness", "Min sharpness", 40, float),
                "max_identity_distance": self._number("max_identity_distance", "Max identity distance", 0.6, float),
                "size": self._number("size", "Training size", 1024, int),
            }
        except ValueError as error:
            self.notify(str(error), severity="error")
            return
        self.dataset, self.job_id = name, None
        # Out of the text field: the verdict table takes the keys, so u, b, p and 1-5 work again.
        self.query_one("#rejected", DataTable).focus()
        self._offer_hint(None)
        self.query_one("#progress", ProgressBar).update(total=100, progress=0)
        self.query_one("#rejected", DataTable).clear()
        self.query_one("#verdict", Static).update("")
        self.query_one("#summary", Static).update(f"sending {photos} to the engine as dataset '{name}'…")
        self.call_engine(lambda: self.link.prepare(name, photos, options), self._started,
                         lambda error: self.query_one("#summary", Static).update(
                             f"not started: {in_form_words(error, LABELS)}"))

    def _number(self, field: str, label: str, default, kind):
        text = self.query_one(f"#{field}", Input).value.strip()
        try:
            return kind(text) if text else default
        except ValueError:
            raise ValueError(f"{label} must be a {'whole ' if kind is int else ''}number, not {text!r}") from None

    def _started(self, job_id: int) -> None:
        self.job_id = job_id
        self.query_one("#summary", Static).update(f"job {job_id}: preparing '{self.dataset}'…")
        self.stream_job(job_id)

    def _offer_hint(self, hint: dict | None) -> None:
        button = self.query_one("#use-hint", Button)
        self.hint_size = hint["suggested_size"] if hint and hint.get("keeps") else None
        button.display = self.hint_size is not None
        if self.hint_size is not None:
            button.label = f"Prepare again at {self.hint_size} px (u)"

    @on(Button.Pressed, "#use-hint")
    def action_use_hint(self) -> None:
        if self.hint_size is not None:
            self.query_one("#size", Input).value = str(self.hint_size)
            self.action_prepare()

    @on(DataTable.RowHighlighted, "#rejected")
    def verdict_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._note(event.data_table.get_row(event.row_key))

    def _note(self, row) -> None:
        photo, verdict, why = row
        self.query_one("#verdict", Static).update(f"{photo}: {verdict}" + (f": {why}" if why else ""))

    def _show_verdicts(self, entries: list[dict]) -> None:
        table = self.query_one("#rejected", DataTable)
        table.clear()
        rows = verdict_rows(entries)
        for row in rows:
            table.add_row(*row)
        if rows:
            self._note(rows[0])  # the cursor's row, rejected first

    @on(JobEvent)
    def job_event(self, event: JobEvent) -> None:
        if event.job_id != self.job_id:
            return
        bar = self.query_one("#progress", ProgressBar)
        if event.kind == "progress":
            bar.update(total=event.data.get("total") or 100, progress=event.data.get("step", 0))
            self.query_one("#summary", Static).update(
                f"job {event.job_id}: {event.data.get('stage', 'preparing')} {event.data.get('step', 0)}/"
                f"{event.data.get('total', '?')} photos")
        elif event.kind == "log":
            self.query_one("#summary", Static).update(event.data.get("message", ""))
        elif event.kind == "done":
            bar.update(total=1, progress=1)
            self._offer_hint((event.data.get("result") or {}).get("hint"))
            self.call_engine(lambda: (self.link.dataset_manifest(self.dataset), self.link.dataset_report(self.dataset)),
                             self._show_result)
        elif event.kind in ("failed", "cancelled", "interrupted"):
            self.query_one("#summary", Static).update(f"prep {ended_words(event.kind, event.data.get('reason'))}")
            self._show_verdicts(event.data.get("entries") or [])
            self._offer_hint(event.data.get("hint"))

    def _show_result(self, result: tuple[dict, bytes]) -> None:
        manifest, report = result
        rejected = manifest.get("rejected", {})
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
        self.query_one("#summary", Static).update(
            f"dataset '{self.dataset}': {manifest.get('accepted', 0)} kept, {sum(rejected.values())} rejected"
            + (f" ({reasons})" if reasons else ""))
        self._show_verdicts(manifest.get("entries", []))
        self.query_one("#sheet", Picture).show(report)
