"""Runs: the seed's comparison table (images, steps, GPU, rank, time, cost) plus what each run trained on,
its state, memory, loss and likeness: the best likeness of any sample grid, its step, and how much that
step copies the training photos. Mark two runs to see their newest grids side by side."""

from __future__ import annotations

from pathlib import PurePath

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Static

from tui.screens.base import EngineScreen
from tui.widgets.picture import Picture

# Short headers and values: at 160 columns the whole comparison fits, likeness and memorisation
# included; LEGEND, under the table, says what the short ones mean.
COLUMNS = ("run", "status", "dataset", "size", "images", "steps", "GPU", "rank", "time", "cost", "peak memory",
           "final loss", "face dist", "best likeness", "at step", "memorisation")
MARKED_STYLE = "bold reverse"


def legend() -> str:
    from engine.training.recommend import THRESHOLDS

    same, copies = THRESHOLDS.good_likeness, THRESHOLDS.memorisation_limit
    return (f"face dist: the newest sample grid's mean face distance to your photos, lower is more alike (under "
            f"{same:.2f}: the same person) · best likeness: the lowest median face distance of any grid, at step · "
            f"memorisation: at that step, 0 draws the person anew, {copies:.2f} or more copies a training photo")


def row_note(run: dict) -> str:
    """The line under the legend for the run the cursor is on: why a run failed, and how to go on."""
    if run.get("damaged"):
        return f"{run['name']}: {run['damaged']}"
    if run.get("error"):
        job = run.get("job_id")
        resume = f"; to go on, pick job {job} on Live run (3) and press r, or `likeness resume {job}`" if job else ""
        return f"{run['name']} {run.get('status') or 'ended'}: {run['error']}{resume}"
    return ""


def run_row(run: dict) -> tuple[str, ...]:
    """One table row from a run's summary; '–' where the run does not know."""
    def fmt(value, spec: str = "", suffix: str = "") -> str:
        return "–" if value is None else f"{value:{spec}}{suffix}"

    wall = run.get("wall_time_s")
    minutes = None if wall is None else wall / 60
    cost = run.get("cost_usd")
    return (
        run["name"], "damaged" if run.get("damaged") else run.get("status") or "–", PurePath(run["dataset"]).name if run.get("dataset") else "–",
        fmt(run.get("resolution"), "", " px"), fmt(run.get("num_images")), fmt(run.get("steps")),
        _short_gpu(run.get("gpu_name")) or run.get("device") or "–", fmt(run.get("lora_rank")),
        fmt(minutes, ".1f", " min"), "–" if cost is None else f"${cost:.2f}",
        fmt(run.get("peak_memory_mb"), ",.0f", " MB"), fmt(run.get("final_loss"), ".4f"),
        fmt(run.get("identity_score_last_grid"), ".2f"),
        fmt(run.get("best_likeness"), ".2f"), fmt(run.get("best_likeness_step")),
        fmt(run.get("memorisation_at_best"), ".2f"),
    )


def _short_gpu(name: str | None) -> str | None:
    """'NVIDIA GeForce RTX 4090' as 'RTX 4090': the vendor's words say nothing a comparison needs."""
    return name.removeprefix("NVIDIA ").removeprefix("GeForce ") if name else None


class RunsScreen(EngineScreen):
    BINDINGS = [Binding("space", "mark", "Mark for side by side"), ("r", "refresh", "Refresh"),
                ("f", "full_screen", "Full screen")]
    # Down and space act on the table from the moment the screen opens.
    AUTO_FOCUS = "#runs"

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[str] = []
        self.runs: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static(legend(), id="legend", classes="status")
        yield Static("", id="row-note")
        yield Static("space marks a run (marked rows are highlighted); mark two to see their newest sample grids "
                     "side by side; f shows the second full-screen (tab to a grid, enter: that one)", id="hint",
                     classes="status")
        with Horizontal():
            yield Picture("first marked run", id="grid-left")
            yield Picture("second marked run", id="grid-right")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        self.query_one("#runs", DataTable).add_columns(*COLUMNS)

    def action_refresh(self) -> None:
        self.call_engine(self.link.runs, self._show)

    def _show(self, runs: list[dict]) -> None:
        self.runs = {r["name"]: r for r in runs}
        self.marked = [name for name in self.marked if name in self.runs]
        self._fill()
        damaged = [f"{r['name']}: {r['damaged']}" for r in runs if r.get("damaged")]
        if damaged:  # listed with what could be read; the reason is what the user needs to repair it
            self.notify("damaged: " + "; ".join(damaged), severity="warning", timeout=10)

    def _fill(self) -> None:
        """Rebuild the rows, keeping the cursor on the run it was on and the focus on the table."""
        table = self.query_one("#runs", DataTable)
        current = self._cursor_run()
        table.clear()
        for run in self.runs.values():
            cells = run_row(run)
            if run["name"] in self.marked:
                cells = tuple(Text(cell, style=MARKED_STYLE) for cell in cells)
            table.add_row(*cells, key=run["name"])
        if current in self.runs:
            table.move_cursor(row=table.get_row_index(current))
        if self.focused is None:
            table.focus()

    def _cursor_run(self) -> str | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def action_mark(self) -> None:
        name = self._cursor_run()
        if name is None:
            self.notify("no runs yet: train one on the Train screen (2)", severity="warning")
            return
        if name in self.marked:
            self.marked.remove(name)
        else:
            self.marked = self.marked[-1:] + [name]
        self._fill()
        self.query_one("#hint", Static).update("side by side: " + " | ".join(self.marked) if self.marked
                                               else "space marks a run; mark two to compare their grids")
        for picture_id in ("#grid-left", "#grid-right"):
            self.query_one(picture_id, Picture).show(None, "mark a run (space)")
        for picture_id, run_name in zip(("#grid-left", "#grid-right"), self.marked, strict=False):
            grid = self.runs[run_name].get("latest_sample_url")
            if grid:
                self.call_engine(lambda grid=grid: self.link.file_bytes(grid),
                                 lambda data, picture_id=picture_id: self.query_one(picture_id, Picture).show(data))
            else:
                self.query_one(picture_id, Picture).show(None, f"{run_name}: no sample grid")

    def action_full_screen(self) -> None:
        right = self.query_one("#grid-right", Picture)
        (right if right.image is not None else self.query_one("#grid-left", Picture)).action_full_screen()

    @on(DataTable.RowHighlighted)
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        run = self.runs.get(event.row_key.value) if event.row_key is not None else None
        self.query_one("#row-note", Static).update(row_note(run) if run else "")

    @on(DataTable.RowSelected)
    def selected(self) -> None:
        self.action_mark()
