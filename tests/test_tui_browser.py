"""`likeness web` in a real browser: headless Chromium on textual-serve's page, against a real engine.

What the Pilot tests cannot see: textual-serve runs the app on a pipe, and the page draws what the
app writes there. Chromium comes from the system (Debian's `chromium`, installed by .ci/run) or from
Playwright's own download; without either the test skips, unless LIKENESS_REQUIRE_TOOLS says it
must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from tests.service_helpers import Service, free_port, make_home

pytestmark = pytest.mark.slow


def chromium_executable() -> str | None:
    """Debian's chromium if there is one; None lets Playwright use its own download."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=chromium_executable())
        except Exception as error:  # no browser build at all on this machine
            if os.environ.get("LIKENESS_REQUIRE_TOOLS"):
                raise
            pytest.skip(f"no Chromium to drive: {str(error).splitlines()[0]}")
        yield browser
        browser.close()


def stripes(width: int = 256, height: int = 192):
    """Pure red, green and blue bands: no theme colour of the app is anywhere near them."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    for x in range(width):
        colour = ((255, 0, 0), (0, 255, 0), (0, 0, 255))[3 * x // width]
        for y in range(height):
            image.putpixel((x, y), colour)
    return image


@pytest.fixture(scope="module")
def web(tmp_path_factory, tiny_model):
    """An engine with one finished run that has a sample grid, and `likeness web` on top of it."""
    home = make_home(tmp_path_factory.mktemp("web-home"), models=tiny_model.parent)
    run = home / "runs" / "colours"
    (run / "samples").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "done", "config": {"resolution": 64}, "steps": 6}))
    stripes().save(run / "samples" / "step-000006.png")
    service = Service(home).start()
    port = free_port()
    env = {**os.environ, "LIKENESS_HOME": str(home)}
    web = subprocess.Popen([sys.executable, "-m", "tui", "web", "--port", str(port), "--server", service.url],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url, timeout=2)
            break
        except requests.ConnectionError:
            assert web.poll() is None and time.monotonic() < deadline, "likeness web did not come up"
            time.sleep(0.2)
    yield url
    web.terminate()
    web.wait(timeout=30)
    service.stop()


def strong_colour_pixels(png: bytes) -> dict[str, int]:
    """How many pixels of the screenshot are nearly pure red, green or blue."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return {"red": int(((r > 200) & (g < 60) & (b < 60)).sum()),
            "green": int(((g > 200) & (r < 60) & (b < 60)).sum()),
            "blue": int(((b > 200) & (r < 60) & (g < 60)).sum())}


def test_pictures_in_the_browser_are_in_colour(browser, web, tmp_path):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(web)
    # Keys go to xterm.js's hidden text area, as they do once a user clicks into the page.
    page.wait_for_selector(".xterm-helper-textarea", state="attached", timeout=60_000)
    page.focus(".xterm-helper-textarea")
    shot, found = b"", {}
    deadline = time.monotonic() + 120
    # Keys sent before the app has drawn its first frame are lost, and the app starts slowly on a busy
    # machine: go to Runs and mark the run (its newest sample grid is drawn on the left) until the
    # picture shows. Escape and 5 are idempotent; a space that unmarked is undone by the next.
    while time.monotonic() < deadline and not min(found.values(), default=0) > 200:
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)  # escape then 5 at once reads as alt+5, as in any terminal
        page.keyboard.press("5")
        page.wait_for_timeout(1500)
        page.keyboard.press("Space")
        for _ in range(8):
            page.wait_for_timeout(1000)
            shot = page.screenshot()
            found = strong_colour_pixels(shot)
            if min(found.values()) > 200:
                break
    (tmp_path / "runs.png").write_bytes(shot)
    # A grey character ramp has none of these; coloured half-blocks have all three bands.
    assert min(found.values()) > 200, f"no colour in the picture: {found} (screenshot {tmp_path / 'runs.png'})"
