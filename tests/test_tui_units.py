"""The TUI's pure helpers: names, table rows, sweep text, ETA."""

from __future__ import annotations

from pathlib import Path

from tui.screens.generate import PRESETS, parse_sweeps
from tui.screens.live_run import format_eta
from tui.screens.photos import dataset_name_for
from tui.screens.runs import COLUMNS, run_row


def test_dataset_name_comes_from_the_folder_or_zip_name():
    assert dataset_name_for(Path("/home/me/Google Photos Export.zip")) == "google-photos-export"
    assert dataset_name_for(Path("/x/!!!")) == "photos"


def test_runs_table_row_has_the_seed_columns_and_dashes_for_unknowns():
    row = run_row({"name": "r1", "num_images": 39, "steps": 500, "gpu_name": "NVIDIA A10G", "lora_rank": 16,
                   "wall_time_s": 1560, "cost_usd": 0.5, "peak_memory_mb": 9512.4, "final_loss": 0.12345,
                   "identity_score_last_grid": 0.41, "best_likeness": 0.3812, "best_likeness_step": 300,
                   "memorisation_at_best": 0.214})
    assert len(row) == len(COLUMNS)
    assert row == ("r1", "39", "500", "NVIDIA A10G", "16", "26.0 min", "$0.50", "9,512 MB", "0.1235", "0.41",
                   "0.38", "300", "0.21")
    sparse = run_row({"name": "r2", "device": "cpu"})
    assert sparse[3] == "cpu" and sparse[5] == "–" and sparse[6] == "–" and sparse[-3:] == ("–", "–", "–")


def test_sweep_text_splits_on_semicolons_and_lines():
    assert parse_sweeps("age=5,10; lora_scale=0,1\ntemperature=0,1;") == ["age=5,10", "lora_scale=0,1", "temperature=0,1"]
    assert all("{" in prompt for prompt, _ in PRESETS.values())


def test_eta_reads_as_minutes_or_hours():
    assert format_eta(None) == "–"
    assert format_eta(75) == "1:15"
    assert format_eta(3725) == "1:02:05"


def test_curves_widget_plots_loss_likeness_memorisation_and_the_recommended_step():
    import asyncio

    from textual.app import App

    from tui.widgets.curves import LikenessCurves

    class Host(App):
        def compose(self):
            yield LikenessCurves(id="curves")

    async def draw() -> tuple[str, str]:
        async with Host().run_test(size=(80, 14)) as pilot:
            curves = pilot.app.query_one(LikenessCurves)
            for step in range(1, 7):
                curves.add_loss(step, 1.0 / step)
            curves.add_sample(3, None, 0.05)
            await pilot.pause()
            no_faces = str(curves.render())
            curves.add_sample(6, 0.42, 0.2)
            curves.recommend(6)
            await pilot.pause()
            return no_faces, str(curves.render())

    no_faces, recommended = asyncio.run(draw())
    assert "no faces found" in no_faces and "recommended" not in no_faces
    assert "recommended: step 6" in recommended
    assert all(name in recommended for name in ("loss", "likeness", "memorisation"))  # the legend
