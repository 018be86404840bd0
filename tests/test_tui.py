"""The TUI driven by Pilot against a real engine service with the tiny model (no mocked engine)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Select, Static

from engine.service.client import ServiceClient
from tests.service_helpers import Service, make_home
from tui.app import LikenessApp
from tui.engine_link import EngineLink
from tui.messages import JobEvent
from tui.screens.runs import COLUMNS
from tui.widgets.curves import LikenessCurves

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model, photos):
    home = make_home(tmp_path_factory.mktemp("tui-home"), models=tiny_model.parent)
    service = Service(home, env={"LIKENESS_PHOTO_ROOTS": str(photos.parent)}).start()
    yield service
    service.stop()


async def until(pilot, condition, timeout: float = 240, what: str = "condition") -> None:
    """Let the app run until ``condition()`` holds; workers post their results meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pilot.app.save_screenshot(str(Path("/tmp") / "likeness-tui-timeout.svg"))
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def fill_train_form(pilot, app, dataset: str, fields: dict[str, str]):
    """Open Train (key 2), pick ``dataset`` once the engine has listed it, and type ``fields``."""
    await pilot.press("2")
    await until(pilot, lambda: type(app.screen).__name__ == "TrainScreen", what="Train screen")
    screen = app.screen
    await until(pilot, lambda: len(screen.query_one("#dataset", Select)._options) > 1, what="datasets")
    screen.query_one("#dataset", Select).value = dataset
    for field, value in fields.items():
        screen.query_one(f"#{field}", Input).value = value
    return screen


def test_photos_to_train_to_live_run_to_generate_to_runs(service, photos):
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def walk() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            # Photos: prep the folder into a dataset and see what was kept.
            await until(pilot, lambda: type(app.screen).__name__ == "PhotosScreen", what="Photos screen")
            app.screen.query_one("#photos", Input).value = str(photos)
            app.screen.query_one("#name", Input).value = "astronaut"
            app.screen.query_one("#size", Input).value = "64"
            await pilot.click("#prepare")
            await until(pilot, lambda: "kept" in text(app, "#summary"), what="prep to finish")
            assert "dataset 'astronaut': 4 kept" in text(app, "#summary")
            await until(pilot, lambda: bool(app.screen.query("#sheet ImageWidget, #sheet Image")),
                        what="the contact sheet")

            # Train: a short custom run on the tiny model.
            screen = await fill_train_form(pilot, app, "astronaut", {})
            screen.query_one("#preset", Select).value = "custom"
            for field, value in {"base": "tiny", "steps": "40", "rank": "4", "resolution": "64",
                                 "sample_every": "2", "name": "tui-run"}.items():
                screen.query_one(f"#{field}", Input).value = value
            # The line for the default preset is there already (/system answers at once): wait for the
            # one for these fields. The tiny model stays on this machine.
            await until(pilot, lambda: "on the CPU" in text(app, "#placement"), what="the tiny model's placement")
            assert "needs ~" in text(app, "#placement")
            await pilot.click("#start")

            # Live run: progress, then a sample grid drawn in the terminal; cancel; resume to the end.
            await until(pilot, lambda: type(app.screen).__name__ == "LiveRunScreen", what="Live run screen")
            live = app.screen
            await until(pilot, lambda: len(live.grids) >= 2, what="sample grids")
            await until(pilot, lambda: bool(live.query("#grid Image")), what="a grid on screen")
            # Cancel asks first: n keeps the job running, y cancels it.
            await pilot.press("c")
            await until(pilot, lambda: type(app.screen).__name__ == "Confirm", what="the cancel question")
            assert f"Cancel job {live.job_id}?" in text(app, "#question")
            await pilot.press("n")
            await until(pilot, lambda: app.screen is live, what="the question to close")
            assert live.query_one("#resume", Button).disabled  # still running: n cancelled nothing
            await pilot.press("c")
            await until(pilot, lambda: type(app.screen).__name__ == "Confirm", what="the cancel question")
            await pilot.press("y")
            await until(pilot, lambda: not live.query_one("#resume", Button).disabled, what="cancel to land")
            assert "cancelled" in text(app, "#stats")
            first_job = live.job_id
            await pilot.press("r")
            await until(pilot, lambda: "done" in text(app, "#stats"), timeout=300, what="the resumed run")
            assert live.job_id == first_job  # a resume continues the same job (its next attempt)
            assert live.losses
            # The curves: loss, and each grid's measures (the tiny model draws no face, so no likeness).
            curves = live.query_one("#curves", LikenessCurves)
            assert curves.losses and sorted(curves.samples)[-1] == 40
            assert all(like is None and mem is not None for like, mem in curves.samples.values())
            assert "no faces found" in str(curves.render())
            assert not live.query_one("#warning", Static).display
            # An overfitting event from the engine appears on the screen, above the curves.
            live.post_message(JobEvent(live.job_id, "overfitting", {
                "step": 40, "cause": "memorisation", "message": "overfitting at step 40: stop here"}))
            await until(pilot, lambda: live.query_one("#warning", Static).display, what="the warning")
            assert "overfitting at step 40: stop here" in text(app, "#warning")

            # Generate: a small sweep; its grid appears and its path is shown.
            await pilot.press("4")
            await until(pilot, lambda: type(app.screen).__name__ == "GenerateScreen", what="Generate screen")
            gen = app.screen
            await until(pilot, lambda: gen.query_one("#run", Select).value == "tui-run", what="the run")
            gen.query_one("#steps", Input).value = "2"
            gen.query_one("#prompt", Input).value = "a photo of {token} {class_word}"
            gen.query_one("#sweeps", Input).value = "lora_scale=0,1"
            await pilot.click("#generate")
            await until(pilot, lambda: gen.query_one("#grid-path", Input).value.endswith(".png"), what="the grid")
            await until(pilot, lambda: bool(gen.query("#grid Image")), what="the grid on screen")

            # Runs: the comparison table has the run; marking it shows its newest grid.
            await pilot.press("5")
            await until(pilot, lambda: type(app.screen).__name__ == "RunsScreen", what="Runs screen")
            runs = app.screen
            await until(pilot, lambda: runs.query_one("#runs", DataTable).row_count == 1, what="the runs table")
            row = runs.query_one("#runs", DataTable).get_row_at(0)
            assert row[:4] == ["tui-run", "done", "astronaut", "64 px"]
            assert row[5] == "40" and row[7] == "4"
            assert row[COLUMNS.index("best likeness")] == "–"  # no face in any grid: no best likeness
            await pilot.press("space")
            await until(pilot, lambda: bool(runs.query("#grid-left Image")), what="the side-by-side grid")

    asyncio.run(walk())


def test_help_and_command_palette(service):
    app = LikenessApp(EngineLink(ServiceClient(service.url)))

    async def look() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("escape", "question_mark")  # escape: out of the path field first
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape")
            await pilot.press("ctrl+p")
            await pilot.pause(0.5)
            # Before anything is typed, the palette already lists where it can go.
            palette = app.screen.query_one("CommandList")
            listed = [str(palette.get_option_at_index(i).prompt) for i in range(palette.option_count)]
            assert all(any(f"Go to {title}" in entry for entry in listed)
                       for title in ("Photos", "Train", "Live run", "Generate", "Runs")), listed
            await pilot.press(*"go to runs")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "RunsScreen", what="Runs via the palette")

    asyncio.run(look())


def test_event_stream_survives_an_engine_restart(tmp_path, tiny_model, dataset):
    """The TUI's stream of a job carries on across a kill -9 and restart of the engine, missing nothing."""
    import threading

    from tests.service_helpers import make_home as home_with_dataset

    home = home_with_dataset(tmp_path / "home", models=tiny_model.parent, dataset=dataset)
    service = Service(home).start()
    job = service.submit("train", {"data": "datasets/astronaut", "out": "runs/r", "base": "tiny", "steps": 400,
                                   "resolution": 64, "rank": 4, "sample_every": 0, "checkpoint_every": 0})
    link = EngineLink(ServiceClient(service.url))
    seen: list[tuple[str, dict]] = []
    reader = threading.Thread(target=lambda: seen.extend(link.events(job["id"])), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(kind == "progress" for kind, _ in seen):
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.2)
        service.kill()
        time.sleep(3)  # the engine is away for a while; the stream keeps trying
        service.start()  # same port: what a restarted container looks like to the TUI
        reader.join(timeout=120)
        assert not reader.is_alive(), "the stream did not end after the restart"
    finally:
        service.stop()
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "interrupted"  # the restarted engine marks the job, and the stream delivers it
    steps = [data["step"] for kind, data in seen if kind == "progress"]
    assert steps == sorted(set(steps)), "an event was repeated across the reconnect"


def test_out_of_memory_offers_to_continue_on_modal(tmp_path, tiny_model, dataset):
    """A run that outgrows this machine's memory stops cleanly; the button moves it to a cloud GPU.

    The engine's workers get a 3 GiB address-space cap, so training at 4096 px runs out of memory for
    real: one allocation past the cap, refused by torch's allocator. (At 2048 px the cap was reached
    piecemeal, and OpenBLAS, meeting it first, could abort the worker without a Python error.) Modal itself is unreachable here: the cloud attempt must get as far as Modal's one-line
    "no token" error, placed on Modal's cheapest GPU.
    """
    home = make_home(tmp_path / "home", models=tiny_model.parent, dataset=dataset)
    service = Service(home, memory_limit=3 * 2**30,
                      env={"MODAL_CONFIG_PATH": str(tmp_path / "no-modal.toml"), "MODAL_TOKEN_ID": "",
                           "MODAL_TOKEN_SECRET": ""}).start()
    job = service.submit("train", {"data": "datasets/astronaut", "out": "runs/big", "base": "tiny", "steps": 4,
                                   "resolution": 4096, "rank": 4, "sample_every": 0, "device": "cpu"})
    client = ServiceClient(service.url)
    app = LikenessApp(EngineLink(client))

    async def walk() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("escape", "3")  # out of the path field first
            await until(pilot, lambda: type(app.screen).__name__ == "LiveRunScreen", what="Live run screen")
            live = app.screen
            modal = live.query_one("#modal", Button)
            assert not modal.display  # nothing to offer while the run is fine
            await until(pilot, lambda: "ran out of memory" in text(app, "#stats"), timeout=180,
                        what="the out-of-memory stop")
            assert modal.display and not modal.disabled
            await pilot.press("m")
            await until(pilot, lambda: client.request("GET", f"/jobs/{job['id']}")["attempt"] == 2,
                        what="the cloud attempt")
            await until(pilot, lambda: "modal token new" in text(app, "#stats"), timeout=120,
                        what="the cloud attempt to end")
            assert not modal.display

    try:
        asyncio.run(walk())
        again = service.get(f"/jobs/{job['id']}").json()
        events = service.events(job["id"])
    finally:
        service.stop()
    assert again["where"] == "modal" and again["state"] == "failed" and again["attempt"] == 2
    assert again["error"] == "no Modal token on this machine: run `modal token new`"
    out_of_memory = next(e for e in events if e["type"] == "failed")
    assert out_of_memory["data"]["out_of_memory"] is True and out_of_memory["data"]["checkpoint_step"] is None
    assert any(e["type"] == "log" and e["data"]["message"].startswith("training on modal (A10G)") for e in events)
    run = json.loads((home / "runs" / "big" / "run.json").read_text())
    assert run["status"] == "out_of_memory"  # the local attempt's record; the cloud one never started
