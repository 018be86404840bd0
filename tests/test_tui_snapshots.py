"""Each screen's layout at 120x40, against a real engine service with nothing in it yet."""

from __future__ import annotations

import pytest

from engine.service.client import ServiceClient
from tests.service_helpers import Service, make_home
from tui.app import LikenessApp
from tui.engine_link import EngineLink

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def empty_service(tmp_path_factory, tiny_model):
    service = Service(make_home(tmp_path_factory.mktemp("snap-home"), models=tiny_model.parent)).start()
    yield service
    service.stop()


def open_screen(key: str):
    async def run_before(pilot) -> None:
        await pilot.press("escape", key)  # at launch the path field has the keys; escape leaves it
        # Wait for the screen's engine calls to land, so a snapshot never catches a half-filled form.
        for _ in range(3):
            await pilot.pause(0.3)
            await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5", "question_mark"],
                         ids=["photos", "train", "live-run", "generate", "runs", "help"])
def test_screen_layout(snap_compare, empty_service, key):
    app = LikenessApp(EngineLink(ServiceClient(empty_service.url)))
    assert snap_compare(app, terminal_size=(120, 40), run_before=open_screen(key))
