"""What confused a newcomer in the second hour, driven through Pilot against a real engine service:
screens that named no other screen, keys that fired with focus where it did not seem to be, paths
and steps the screens did not say."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Input, Select

from engine.service.client import ServiceClient
from tests.service_helpers import Service, make_home
from tests.test_tui import fill_train_form, text, until
from tui.app import LikenessApp
from tui.engine_link import EngineLink
from tui.widgets.screen_tabs import SCREEN_TITLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model, dataset):
    home = make_home(tmp_path_factory.mktemp("second-hour-home"), models=tiny_model.parent, dataset=dataset)
    # No Modal token, whatever this machine has: a run sent to Modal fails at once, as on a new install.
    service = Service(home, env={"MODAL_CONFIG_PATH": str(home / "no-modal.toml")}).start()
    yield service
    service.stop()


def run(app: LikenessApp, steps, size=(160, 50)) -> None:
    async def walk() -> None:
        async with app.run_test(size=size) as pilot:
            await steps(pilot)

    asyncio.run(walk())


SCREENS = {"1": "PhotosScreen", "2": "TrainScreen", "3": "LiveRunScreen", "4": "GenerateScreen", "5": "RunsScreen"}


def test_every_screen_names_all_five_whatever_has_focus(service):
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def steps(pilot) -> None:
        for key, screen in SCREENS.items():
            await pilot.press("escape")
            await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
            await pilot.press(key)
            await until(pilot, lambda screen=screen: type(app.screen).__name__ == screen, what=screen)
            # A field of the screen takes the keys (the footer then hides 1-5): the tab line still names them.
            fields = app.screen.query(Input) or app.screen.query(Select)
            if fields:
                fields.first().focus()
                await pilot.pause()
            line = app.screen.query_one("#tabs").render()
            assert all(f"{n} {title}" in line.plain for n, title in zip("12345", SCREEN_TITLES.values(), strict=True))
            # The current screen is marked: its name is drawn reversed.
            marked = [line.plain[span.start:span.end] for span in line.spans if "reverse" in str(span.style)]
            assert marked == [f" {key} {SCREEN_TITLES[list(SCREEN_TITLES)[int(key) - 1]]} "]

    run(app, steps)


def test_the_focused_field_is_drawn_plainly_and_letters_do_not_fire_from_a_form(service):
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def steps(pilot) -> None:
        await pilot.press("escape")
        await pilot.pause(0.3)
        await pilot.press("escape")
        await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
        await pilot.press("2")
        await until(pilot, lambda: type(app.screen).__name__ == "TrainScreen", what="Train")
        steps_field, rank_field = app.screen.query_one("#steps", Input), app.screen.query_one("#rank", Input)
        steps_field.focus()
        await pilot.pause()
        # A heavy border, not only another colour: visible in tmux's 256 colours too.
        assert steps_field.styles.border_top[0] == "heavy" and rank_field.styles.border_top[0] != "heavy"
        # Focus on a drop-down (tab moved it off a field): typing 1 or s must neither switch screens
        # nor start a run.
        preset = app.screen.query_one("#preset", Select)
        preset.focus()
        await pilot.pause()
        await pilot.press("1", "s", "q")
        await pilot.pause(0.5)
        assert type(app.screen).__name__ == "TrainScreen" and app.is_running
        assert ServiceClient(service.url).jobs() == []
        # Escape leaves it; then the keys work again.
        await pilot.press("escape")
        await pilot.pause(0.3)
        await pilot.press("1")
        await until(pilot, lambda: type(app.screen).__name__ == "PhotosScreen", what="Photos")

    run(app, steps)


def test_a_mistyped_hub_base_is_refused_on_train_in_the_words_of_the_cli(service, dataset, tmp_path, capsys):
    from engine.cli import main

    typo = "stabilityai/sdxl-typo"  # not cached, and the hub is offline here (HF_HUB_OFFLINE, as in conftest)
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--base", typo]) == 2
    cli_error = capsys.readouterr().err.strip().removeprefix("likeness: error: ")
    assert typo in cli_error
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def steps(pilot) -> None:
        await pilot.press("escape")
        await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
        await pilot.press("2")
        await until(pilot, lambda: type(app.screen).__name__ == "TrainScreen", what="Train")
        app.screen.query_one("#base", Input).value = typo
        await until(pilot, lambda: cli_error in text(app, "#placement"), what="the CLI's refusal on the plan line")
        placement = text(app, "#placement")
        assert placement.startswith("cannot start yet") and "modal on" not in placement and "tiny" in placement
        await until(pilot, lambda: app.screen.query_one("#dataset", Select).value == "astronaut", what="a dataset")
        await pilot.press("s")
        await pilot.pause(1)
        assert ServiceClient(service.url).jobs() == []  # refused, as the CLI refuses it

    run(app, steps)


TINY = {"data": "datasets/astronaut", "base": "tiny", "resolution": 64, "rank": 4, "sample_every": 0,
        "checkpoint_every": 0}


def test_after_training_live_run_shows_full_paths_and_copies_the_lora_path(service):
    job = service.submit("train", {**TINY, "out": "runs/paths", "steps": 2})
    service.wait_for(job["id"], {"done", "failed", "cancelled"})
    app = LikenessApp(EngineLink(ServiceClient(service.url)))
    lora = str(service.home / "runs" / "paths" / "lora.safetensors")

    async def steps(pilot) -> None:
        await pilot.press("escape")
        await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
        await pilot.press("3")
        await until(pilot, lambda: type(app.screen).__name__ == "LiveRunScreen", what="Live run")
        await until(pilot, lambda: lora in text(app, "#outputs"), what="the LoRA's full path")
        assert f"run folder: {service.home / 'runs' / 'paths'}" in text(app, "#outputs")
        footer_keys = [binding.key for (_, binding, enabled, _) in app.screen.active_bindings.values() if enabled]
        assert "y" in footer_keys  # shown in the footer once there is a LoRA to copy
        await pilot.press("y")
        await pilot.pause(0.2)
        assert app.clipboard == lora

    run(app, steps)


def test_a_reopened_tui_names_the_running_job_and_quitting_says_it_goes_on(service):
    from textual.notifications import Notification  # noqa: F401 - the type app._notifications holds

    client = ServiceClient(service.url)
    job = service.submit("train", {**TINY, "out": "runs/going-on", "steps": 400})
    service.wait_for(job["id"], {"progress", "failed", "done"})
    app = LikenessApp(EngineLink(client))

    async def steps(pilot) -> None:
        def said() -> list[str]:
            return [n.message for n in app._notifications
                    if f"job {job['id']} (train runs/going-on) is running" in n.message]
        await until(pilot, lambda: bool(said()), what="the running job named on opening")
        assert "step " in said()[0] and "/400" in said()[0] and "Live run (3)" in said()[0]
        await pilot.press("escape")
        await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
        await pilot.press("3")
        await until(pilot, lambda: type(app.screen).__name__ == "LiveRunScreen" and app.screen.job_id == job["id"],
                    what="Live run on the running job")

    try:
        run(app, steps)
        line = EngineLink(client).goodbye()  # what `likeness` prints once the TUI has quit
        assert line is not None and f"job {job['id']}" in line and "goes on in the engine" in line
        assert "likeness jobs" in line and f"likeness cancel {job['id']}" in line and "\n" not in line
    finally:
        client.cancel(job["id"])
        service.wait_for(job["id"], {"cancelled", "done", "failed"})
    assert EngineLink(client).goodbye() is None  # nothing going on: nothing said


def test_a_run_that_failed_before_writing_anything_is_in_runs_with_why_and_jobs_says_where_it_went(service, capsys):
    from engine.cli import main

    sent = service.post("/jobs", json={"kind": "train", "config": {**TINY, "out": "runs/to-modal", "steps": 2},
                                       "where": "modal"})
    assert sent.status_code == 201, sent.text
    job = sent.json()
    assert service.wait_for(job["id"], {"done", "failed", "cancelled"})[-1]["type"] == "failed"
    assert not (service.home / "runs" / "to-modal" / "run.json").exists()  # the case: nothing on disk says it ran

    # `likeness jobs` says where placement sent it (Modal's cheapest GPU that fits), not what was asked.
    assert main(["jobs", "--server", service.url]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "runs/to-modal" in line)
    assert "modal (A10G)" in row and "failed" in row

    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def steps(pilot) -> None:
        await pilot.press("escape")
        await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
        await pilot.press("5")
        await until(pilot, lambda: type(app.screen).__name__ == "RunsScreen", what="Runs")
        table = app.screen.query_one("#runs")
        await until(pilot, lambda: "to-modal" in [key.value for key in table.rows], what="the failed run's row")
        assert table.get_row("to-modal")[1] == "failed"
        # Every short column is explained under the table.
        legend = text(app, "#legend")
        assert all(f"{column}:" in legend for column in ("face dist", "best likeness", "memorisation"))
        table.move_cursor(row=table.get_row_index("to-modal"))
        await until(pilot, lambda: "to-modal failed: no Modal token" in text(app, "#row-note"), what="why it failed")
        assert f"likeness resume {job['id']}" in text(app, "#row-note")

    run(app, steps)


def test_refusals_name_the_forms_field_in_plain_words_and_an_empty_step_is_not_red(service, tmp_path):
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def steps(pilot) -> None:
        await until(pilot, lambda: type(app.screen).__name__ == "PhotosScreen", what="Photos")
        app.screen.query_one("#photos", Input).value = str(tmp_path)
        app.screen.query_one("#size", Input).value = "5000"
        await pilot.press("escape")
        await pilot.press("p")
        await until(pilot, lambda: "not started" in text(app, "#summary"), what="the refusal")
        # Not "options.size: Input should be less than or equal to 4096".
        assert "not started: Training size must be at most 4096" in text(app, "#summary")

        await pilot.press("escape")
        await pilot.pause(0.3)  # escape then a digit at once reads as alt+digit
        await pilot.press("4")
        await until(pilot, lambda: type(app.screen).__name__ == "GenerateScreen", what="Generate")
        step = app.screen.query_one("#step", Input)
        step.focus()
        await pilot.press("5", "backspace", "tab")
        await pilot.pause()
        assert step.value == "" and not step.has_class("-invalid")  # empty: the recommended step, the default

        # Train's refusal at start: once, in the form's words, not "service: config.out: runs/NAME: …".
        await pilot.press("escape")
        await pilot.pause(0.3)
        train = await fill_train_form(pilot, app, "astronaut", {"base": "tiny", "name": "-b"})
        await until(pilot, lambda: "on the CPU" in text(app, "#placement"), what="the plan")
        train.action_start()
        said = lambda: [n.message for n in app._notifications if "not started" in n.message or "config" in n.message]  # noqa: E731
        await until(pilot, lambda: bool(said()), what="the refusal")
        await pilot.pause(0.5)
        assert said() == ["not started: Run name '-b' is not a valid name (1 to 100 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit, without '..')"]

    run(app, steps)


def test_a_verdict_too_long_for_the_table_is_shown_in_full_under_it(service, photos):
    import shutil

    folder = service.home / "messy"  # inside the engine's photo roots
    shutil.copytree(photos, folder)
    (folder / "a-photo-whose-name-is-far-too-long-for-the-narrow-verdict-table-beside-the-sheet.jpg").write_bytes(
        b"not a jpeg at all")
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def steps(pilot) -> None:
        await until(pilot, lambda: type(app.screen).__name__ == "PhotosScreen", what="Photos")
        app.screen.query_one("#photos", Input).value = str(folder)
        app.screen.query_one("#name", Input).value = "messy"
        app.screen.query_one("#size", Input).value = "64"
        await pilot.press("enter")
        table = app.screen.query_one("#rejected")
        await until(pilot, lambda: table.row_count == 5, timeout=120, what="the verdicts")
        # Rejected first: the unreadable file is the highlighted row, its name and reason whole.
        await until(pilot, lambda: "pillow-heif" in text(app, "#verdict"), what="the row's note")
        note = text(app, "#verdict")
        assert "far-too-long-for-the-narrow-verdict-table-beside-the-sheet.jpg: rejected: " in note
        assert "not a format Pillow or pillow-heif can read" in note
        await pilot.press("down")
        await until(pilot, lambda: ": kept" in text(app, "#verdict"), what="the next row's note")

    run(app, steps)
