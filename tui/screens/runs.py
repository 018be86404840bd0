"""Runs: the seed's comparison table (images, steps, GPU, rank, time, cost) plus memory, loss and likeness:
the best likeness of any sample grid, its step, and how much that step copies the training photos."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Static

from tui.screens.base import EngineScreen
from tui.widgets.picture import Picture

COLUMNS = ("run", "training images", "steps", "GPU", "LoRA rank", "training time", "cost", "peak memory",
           "final loss", "face distance", "best likeness", "at step", "memorisation")


def run_row(run: dict) -> tuple[str, ...]:
    """One table row from a run's summary; '–' where the run does not know."""
    def fmt(value, spec: str = "", suffix: str = "") -> str:
        return "–" if value is None else f"{value:{spec}}{suffix}"

    wall = run.get("wall_time_s")
    minutes = None if wall is None else wall / 60
    cost = run.get("cost_usd")
    return (
        run["name"], fmt(run.get("num_images")), fmt(run.get("steps")),
        run.get("gpu_name") or run.get("device") or "–", fmt(run.get("lora_rank")),
        fmt(minutes, ".1f", " min"), "–" if cost is None else f"${cost:.2f}",
        fmt(run.get("peak_memory_mb"), ",.0f", " MB"), fmt(run.get("final_loss"), ".4f"),
        fmt(run.get("identity_score_last_grid"), ".2f"),
        fmt(run.get("best_likeness"), ".2f"), fmt(run.get("best_likeness_step")),
        fmt(run.get("memorisation_at_best"), ".2f"),
    )


class RunsScreen(EngineScreen):
    BINDINGS = [("space", "mark", "Mark for side by side"), ("r", "refresh", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("space marks a run; mark two to see their newest sample grids side by side", id="hint",
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
        table = self.query_one("#runs", DataTable)
        table.clear()
        for run in runs:
            table.add_row(*run_row(run), key=run["name"])

    def action_mark(self) -> None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return
        name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        self.marked = [n for n in self.marked if n != name][-1:] + [name]
        self.query_one("#hint", Static).update("side by side: " + " | ".join(self.marked))
        for picture_id, run_name in zip(("#grid-left", "#grid-right"), self.marked, strict=False):
            grid = self.runs[run_name].get("latest_sample_url")
            if grid:
                self.call_engine(lambda grid=grid: self.link.file_bytes(grid),
                                 lambda data, picture_id=picture_id: self.query_one(picture_id, Picture).show(data))
            else:
                self.query_one(picture_id, Picture).show(None, f"{run_name}: no sample grid")

    @on(DataTable.RowSelected)
    def selected(self) -> None:
        self.action_mark()
