"""What confused a newcomer in the second hour, driven through Pilot against a real engine service:
screens that named no other screen, keys that fired with focus where it did not seem to be, paths
and steps the screens did not say."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Input, Select

from engine.service.client import ServiceClient
from tests.service_helpers import Service, make_home
from tests.test_tui import until
from tui.app import LikenessApp
from tui.engine_link import EngineLink
from tui.widgets.screen_tabs import SCREEN_TITLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model, dataset):
    home = make_home(tmp_path_factory.mktemp("second-hour-home"), models=tiny_model.parent, dataset=dataset)
    service = Service(home).start()
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
