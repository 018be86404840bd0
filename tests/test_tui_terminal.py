"""`likeness` as a user starts it: in a real terminal (tmux), and in a browser (likeness web)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.service_helpers import free_port, make_home

pytestmark = pytest.mark.slow
LIKENESS = str(Path(sys.executable).parent / "likeness")


def tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        if os.environ.get("LIKENESS_REQUIRE_TOOLS"):
            pytest.fail("tmux is not installed")
        pytest.skip("tmux is not installed")
    return path


def screen_text(session: str) -> str:
    return subprocess.run([tmux(), "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def wait_for_text(session: str, needle: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen_text(session)
        if needle in text:
            return text
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never appeared; the screen shows:\n{screen_text(session)}")


def test_launch_navigate_and_quit_in_tmux(tmp_path, tiny_model):
    home = make_home(tmp_path / "home", models=tiny_model.parent)
    session = f"likeness-test-{os.getpid()}"
    command = f"env LIKENESS_HOME={home} TERM=xterm-256color {LIKENESS}"
    subprocess.run([tmux(), "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], check=True)
    try:
        wait_for_text(session, "Photos: a folder or a .zip export")  # `likeness` alone opens the TUI
        state = json.loads((home / "tui-service.json").read_text())  # ... with an engine of its own
        subprocess.run([tmux(), "send-keys", "-t", session, "2"], check=True)
        wait_for_text(session, "Train a LoRA")
        subprocess.run([tmux(), "send-keys", "-t", session, "?"], check=True)
        wait_for_text(session, "From a photo folder to pictures of one person")
        subprocess.run([tmux(), "send-keys", "-t", session, "Escape"], check=True)
        # A key sent right after Escape would arrive as alt+key: wait until the dialog has closed.
        deadline = time.monotonic() + 20
        while "From a photo folder" in screen_text(session):
            assert time.monotonic() < deadline, "Escape did not close the help"
            time.sleep(0.2)
        subprocess.run([tmux(), "send-keys", "-t", session, "5"], check=True)
        wait_for_text(session, "training images")
        subprocess.run([tmux(), "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 30
        while subprocess.run([tmux(), "has-session", "-t", session], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "likeness did not quit on q"
            time.sleep(0.2)
    finally:
        subprocess.run([tmux(), "kill-session", "-t", session], capture_output=True)
    # No job was running, so the engine it started is stopped with it.
    assert not (home / "tui-service.json").exists()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{state['pid']}").exists() and "zombie" not in _status(state["pid"]):
        assert time.monotonic() < deadline, "the TUI's engine is still running"
        time.sleep(0.2)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_likeness_web_serves_the_tui_to_a_browser(tmp_path, tiny_model):
    port = free_port()
    env = {**os.environ, "LIKENESS_HOME": str(make_home(tmp_path / "home", models=tiny_model.parent))}
    web = subprocess.Popen([LIKENESS, "web", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    html = page.read().decode()
                break
            except OSError:
                assert web.poll() is None, web.stdout.read().decode()
                assert time.monotonic() < deadline, "likeness web did not answer"
                time.sleep(0.3)
        assert "likeness" in html and "<html" in html.lower()
    finally:
        web.terminate()
        web.wait(10)
