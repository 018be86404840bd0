"""The TUI's pure helpers: names, table rows, sweep text, ETA."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.screens.generate import PRESETS, parse_sweeps
from tui.screens.live_run import format_eta
from tui.screens.photos import dataset_name_for, verdict_rows
from tui.screens.runs import COLUMNS, run_row
from tui.screens.train import field_error, matching_preset, run_name


def test_dataset_name_comes_from_the_folder_or_zip_name():
    assert dataset_name_for(Path("/home/me/Google Photos Export.zip")) == "google-photos-export"
    assert dataset_name_for(Path("/x/!!!")) == "photos"


def test_runs_table_row_has_the_seed_columns_and_dashes_for_unknowns():
    row = run_row({"name": "r1", "status": "done", "dataset": "datasets/me", "resolution": 1024, "num_images": 39,
                   "steps": 500, "gpu_name": "NVIDIA A10G", "lora_rank": 16, "wall_time_s": 1560, "cost_usd": 0.5,
                   "peak_memory_mb": 9512.4, "final_loss": 0.12345, "identity_score_last_grid": 0.41,
                   "best_likeness": 0.3812, "best_likeness_step": 300, "memorisation_at_best": 0.214})
    assert len(row) == len(COLUMNS)
    assert row == ("r1", "done", "me", "1024 px", "39", "500", "A10G", "16", "26.0 min", "$0.50",
                   "9,512 MB", "0.1235", "0.41", "0.38", "300", "0.21")
    assert run_row({"name": "r3", "gpu_name": "NVIDIA GeForce RTX 4090"})[6] == "RTX 4090"
    sparse = run_row({"name": "r2", "device": "cpu"})
    assert sparse[1:4] == ("–", "–", "–") and sparse[6] == "cpu" and sparse[8] == "–" and sparse[9] == "–"
    assert sparse[-3:] == ("–", "–", "–")


def test_sweep_text_splits_on_semicolons_and_lines():
    assert parse_sweeps("age=5,10; lora_scale=0,1\ntemperature=0,1;") == ["age=5,10", "lora_scale=0,1", "temperature=0,1"]
    assert all("{" in prompt for prompt, _ in PRESETS.values())


def test_two_sweeps_need_no_semicolon_between_them():
    """The obvious spellings a newcomer types all mean two sweeps."""
    from engine.generation.sweeps import parse_sweep, split_sweeps

    two = ["lora_scale=0,0.5,1", "temperature=0,0.5,1"]
    for text in ("lora_scale=0,0.5,1 temperature=0,0.5,1", "lora_scale=0,0.5,1; temperature=0,0.5,1",
                 "lora_scale=0, 0.5, 1  temperature = 0,0.5,1", "lora_scale=0,0.5,1,\ntemperature=0,0.5,1"):
        assert split_sweeps(text) == two, text
        assert [parse_sweep(part)[0] for part in parse_sweeps(text)] == ["lora_scale", "temperature"]
    assert split_sweeps("hair=red hair,grey hair age=5,80") == ["hair=red hair,grey hair", "age=5,80"]
    # The seed's strength × temperature grid is one preset away.
    prompt, sweeps = PRESETS["strength-temperature"]
    assert [parse_sweep(part)[0] for part in parse_sweeps(sweeps)] == ["lora_scale", "temperature"]


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
    # The legend is in words beside the plot, not plotext's 'L ⢕⢕ loss / ⅃ •• memorisation'.
    assert not any(side in recommended for side in ("⅃", "⅂", "Γ"))
    from rich.text import Text

    from tui.widgets.curves import curves_legend

    legend = Text.from_markup(curves_legend()).plain
    assert "loss (left axis)" in legend and "right axis 0–1" in legend
    assert all(name in legend for name in ("likeness", "memorisation", "recommended step"))


def test_every_photo_gets_a_verdict_row_rejected_first():
    rows = verdict_rows([{"source": "a.jpg", "status": "accepted"},
                         {"source": "b.jpg", "status": "rejected", "reason": "too small", "detail": "face 89 px"}])
    assert rows == [("b.jpg", "rejected", "too small · face 89 px"), ("a.jpg", "kept", "")]


def test_the_preset_label_follows_the_numbers_and_names_the_run():
    values = {"steps": "500", "rank": "16", "lr": "0.0001", "resolution": "1024", "sample_every": "100"}
    assert matching_preset(values) == "quick"
    assert matching_preset({**values, "steps": "40"}) == "custom"
    assert matching_preset({**values, "steps": ""}) == "custom"
    assert run_name("astronaut", "custom") == "astronaut-custom" and run_name(None, "quick") == "me-quick"


def test_a_config_error_names_the_form_field():
    from pathlib import Path

    from pydantic import ValidationError

    from engine.training.config import TrainConfig

    with pytest.raises(ValidationError) as caught:
        TrainConfig(data=Path("."), out=Path("."), resolution=100)
    assert field_error(caught.value).startswith("Resolution: ")


def test_in_a_browser_pictures_are_coloured_half_blocks_not_a_grey_ramp():
    """textual-serve runs the app on a pipe, where textual-image falls back to greyscale characters.

    Asked in a child whose stdout is a pipe, as under `likeness web` (pytest's own capture may or may
    not leave a terminal behind, depending on -s).
    """
    import subprocess
    import sys

    chosen = subprocess.run(
        [sys.executable, "-c", "from tui.widgets.picture import image_widget_class as c; print(c().__name__)"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=True, timeout=60)
    assert chosen.stdout.strip() == "HalfcellImage"


def test_folder_picker_hides_dotfiles_and_goes_up_to_other_folders(tmp_path):
    import asyncio

    from textual.app import App
    from textual.widgets import DirectoryTree

    from tui.screens.folder_picker import FolderPicker

    start = tmp_path / "home" / "me"
    (start / ".cache").mkdir(parents=True)
    (start / "Pictures").mkdir()
    (tmp_path / "other-disk").mkdir()

    async def walk() -> None:
        app = App()
        async with app.run_test(size=(120, 40)) as pilot:
            picker = FolderPicker(start)
            await app.push_screen(picker)
            tree = picker.query_one("#tree", DirectoryTree)
            await pilot.pause(0.5)
            assert [child.label.plain for child in tree.root.children] == ["Pictures"]
            await pilot.press("backspace", "backspace")  # up twice: where the other disk is
            await pilot.pause(0.5)
            assert Path(tree.path) == tmp_path
            assert "other-disk" in [child.label.plain for child in tree.root.children]
            await pilot.press("ctrl+r")
            await pilot.pause(0.2)
            assert Path(tree.path) == Path("/")

    asyncio.run(walk())


def test_train_plan_says_modal_is_not_set_up_before_starting_and_offers_tiny():
    from engine.errors import LikenessError
    from tui.engine_link import EngineLink

    link = EngineLink(client=None)
    no_gpu = {"gpu_name": None, "ram_available_mb": 16_000, "modal_configured": False}
    sdxl = {"base": "stabilityai/stable-diffusion-xl-base-1.0", "resolution": 1024, "steps": 500, "rank": 16}
    with pytest.raises(LikenessError) as refused:
        link.plan(sdxl, no_gpu)
    assert "modal token new" in str(refused.value) and "tiny" in str(refused.value)
    _, line = link.plan({**sdxl, "base": "tiny", "resolution": 64, "steps": 30}, no_gpu)  # what it offers works
    assert "CPU" in line
    _, line = link.plan(sdxl, {**no_gpu, "modal_configured": True})
    assert "modal" in line


def test_a_jobs_end_says_its_state_once():
    from engine.service.client import ended_words

    assert ended_words("cancelled", "cancelled at step 20") == "cancelled at step 20"  # not "cancelled cancelled"
    assert ended_words("failed", "no Modal token on this machine") == "failed: no Modal token on this machine"
    assert ended_words("done", None) == ended_words("done", " ") == "done"


def test_refusals_read_in_the_forms_words():
    from tui.field_words import in_form_words

    labels = {"size": "Training size", "steps": "Denoising steps"}
    assert (in_form_words("service: options.size: Input should be less than or equal to 4096", labels)
            == "Training size must be at most 4096")
    assert in_form_words("steps: Input should be greater than 0", labels) == "Denoising steps must be more than 0"
    assert (in_form_words("rank: Input should be greater than or equal to 1", labels)
            == "rank: Input should be greater than or equal to 1")  # a field this form has not: as it came
    assert in_form_words("the folder is not allowed: /x", labels) == "the folder is not allowed: /x"


def test_a_grids_title_and_labels_are_terminal_text_above_it_and_on_the_full_screen(tmp_path):
    import asyncio

    from PIL import Image
    from textual.app import App
    from textual.widgets import Static

    from engine.grid import labelled_grid, save_png_atomically
    from tui.widgets.picture import FullPicture, Picture

    cell = Image.new("RGB", (64, 64), (0, 128, 255))
    save_png_atomically(labelled_grid([[cell, cell]], ["a photo of sks man"], ["seed 0", "seed 1"],
                                      title="run me · step 30"), tmp_path / "grid.png")

    class Host(App):
        def compose(self):
            yield Picture(id="grid")

    async def look() -> tuple[str, str]:
        async with Host().run_test(size=(120, 40)) as pilot:
            picture = pilot.app.query_one(Picture)
            picture.show((tmp_path / "grid.png").read_bytes())
            await pilot.pause()
            caption = str(picture.query_one(".picture--caption", Static).render())
            picture.focus()
            await pilot.press("f")
            await pilot.pause()
            assert isinstance(pilot.app.screen, FullPicture)
            return caption, str(pilot.app.screen.query_one(Static).render())

    caption, full = asyncio.run(look())
    assert caption == "run me · step 30\nrows: a photo of sks man; columns: seed 0 | seed 1"
    assert full.startswith(caption) and "escape closes" in full


def test_a_wide_picture_full_screen_keeps_its_shape():
    import asyncio

    from PIL import Image
    from textual.app import App

    from tui.widgets.picture import FullPicture

    sheet = Image.new("RGB", (1666, 462), (200, 30, 30))  # a contact sheet's shape

    class Host(App):
        def on_mount(self):
            self.push_screen(FullPicture(sheet))

    async def look():
        async with Host().run_test(size=(160, 50)) as pilot:
            await pilot.pause()
            return pilot.app.screen.query_one(".picture--image").region

    region = asyncio.run(look())
    # A half-block cell is one pixel across and two down: the shape on screen is width / (2 × height).
    assert abs(region.width / (2 * region.height) - 1666 / 462) < 0.25, region  # was 1.63: 2.2x too tall
