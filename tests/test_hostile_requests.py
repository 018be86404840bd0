"""What a foreign web page can do to the engine and to `likeness web`: nothing.

Real requests with the headers a hostile page's requests carry, against a real `likeness serve`
without a token (as the TUI's engine used to run) and a real `likeness web`: DNS rebinding (a foreign
Host), cross-site simple requests (a foreign Origin, form content types), a WebSocket from another
site; and what users send that must stay text: prompts with format specs, sweep values with slashes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from engine.errors import LikenessError
from tests.service_helpers import Service, free_port, make_home, train_config

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def open_service(tmp_path_factory, dataset):
    """A service without a token, on loopback, holding a prepared dataset and photos."""
    home = make_home(tmp_path_factory.mktemp("hostile") / "home", dataset=dataset)
    running = Service(home).start()
    yield running
    running.stop()


def _photo(service: Service) -> str:
    name = sorted((service.home / "datasets" / "astronaut" / "images").iterdir())[0].name
    return f"/datasets/astronaut/files/images/{name}"


def test_dns_rebinding_gets_nothing_without_a_token(open_service):
    photo = _photo(open_service)
    assert open_service.get(photo).status_code == 200
    assert open_service.get(photo, headers={"Host": f"localhost:{open_service.port}"}).status_code == 200
    # The page's own name, resolved to 127.0.0.1: the browser sends it in Host.
    for path in (photo, "/datasets", "/jobs", "/docs"):
        answer = open_service.get(path, headers={"Host": f"attacker.example:{open_service.port}"})
        assert answer.status_code == 403, path
        assert "not this service's name" in answer.json()["detail"]
    before = open_service.get("/jobs").json()
    answer = open_service.post("/datasets", json={"name": "leak", "photos": "/etc"},
                               headers={"Host": "attacker.example"})
    assert answer.status_code == 403
    assert open_service.get("/jobs").json() == before


def test_a_token_lets_any_host_name_through(tmp_path):
    service = Service(make_home(tmp_path / "home"), token="secret-token-123").start()
    try:
        # Behind a proxy or in compose the name is the proxy's: the token is what proves the caller.
        assert service.get("/jobs", headers={"Host": "engine:8000"}).status_code == 200
        assert service.get("/jobs", headers={"Host": "engine:8000", "Authorization": ""}).status_code == 401
    finally:
        service.stop()


def test_cross_site_simple_requests_change_nothing(open_service, photos):
    url = open_service.url
    manifest = (open_service.home / "datasets" / "astronaut" / "manifest.json").read_text()
    # What a page sends with a form or fetch(..., {mode: "no-cors"}): its Origin, a form content type.
    for path in ("/jobs/999/cancel", "/jobs/999/resume"):
        answer = requests.post(url + path, data={"x": "1"}, headers={"Origin": EVIL}, timeout=30)
        assert answer.status_code == 403 and "may not change anything" in answer.json()["detail"]
    with (sorted(photos.iterdir())[0]).open("rb") as photo:
        answer = requests.post(url + "/datasets/astronaut/upload", headers={"Origin": EVIL}, timeout=30,
                               files={"files": ("a.jpg", photo)},
                               data={"options": json.dumps({"force": True, "size": 64})})
    assert answer.status_code == 403
    # A sandboxed frame's Origin is "null"; a form with no Origin at all (older browsers) is refused by type.
    answer = requests.post(url + "/jobs/999/cancel", data={"x": "1"}, headers={"Origin": "null"}, timeout=30)
    assert answer.status_code == 403
    answer = requests.post(url + "/jobs/999/cancel", data="x", headers={"Content-Type": "text/plain"}, timeout=30)
    assert answer.status_code == 403 and "X-Likeness-Client" in answer.json()["detail"]
    assert (open_service.home / "datasets" / "astronaut" / "manifest.json").read_text() == manifest
    assert not (open_service.home / "uploads" / "astronaut").exists()
    # Our own clients: JSON or no body, or the header no page can send to another site; the page's own origin.
    assert requests.post(url + "/jobs/999/cancel", timeout=30).status_code == 404
    assert requests.post(url + "/jobs/999/cancel", data="x", timeout=30,
                         headers={"Content-Type": "text/plain", "X-Likeness-Client": "1"}).status_code == 404
    assert requests.post(url + "/jobs/999/cancel", headers={"Origin": url}, timeout=30).status_code == 404


def test_docs_are_served_without_a_cdn(open_service):
    answer = open_service.get("/docs")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert "/jobs/{job_id}/resume" in page and "/openapi.json" in page
    assert "<script" not in page.lower() and "cdn" not in page.lower() and "https://" not in page
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert open_service.get("/redoc").status_code == 404
    assert open_service.get("/openapi.json").json()["info"]["title"] == "likeness"


@pytest.mark.parametrize("field, value", [
    ("validation_prompts", ["{token:>1000000000}"]),
    ("validation_prompts", ["{token.__class__.__name__}"]),
    ("validation_prompts", ["{token!r}"]),
    pytest.param("validation_prompts", ["x" * 25_000 + " {token}"], id="too-long"),
])
def test_format_specs_in_training_prompts_are_422_at_once(open_service, field, value):
    started = time.monotonic()
    answer = open_service.post("/jobs", json={"kind": "train", "config": train_config("runs/p", **{field: value})})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"].startswith("config")
    assert time.monotonic() - started < 5  # no gigabyte string was built on the way


@pytest.mark.parametrize("prompt", ["{token:>300000000}", "{token.nope}", "{0}", "a { lone brace",
                                    pytest.param("p" * 25_000, id="too-long")])
def test_format_specs_in_generate_prompts_are_422(open_service, prompt):
    answer = open_service.post("/jobs", json={"kind": "generate", "config": {
        "prompt": prompt, "out": "runs/g/out", "base": "tiny", "steps": 1}})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "config.prompt"


def test_placeholders_are_filled_as_plain_text():
    from engine.prompts import fill, placeholders

    assert fill("{{literal}} {token} {class_word}", {"token": "{x:>9}", "class_word": "person"}) == \
        "{literal} {x:>9} person"
    assert placeholders("a {age} year old {token} {age}") == ["age", "token"]
    with pytest.raises(LikenessError, match="plain name"):
        fill("{token:>100}", {"token": "sks"})


@pytest.mark.slow
def test_a_sweep_value_never_becomes_a_path(trained_run, settings, tmp_path):
    """Grid files of a third axis are named from its values (as `--sweep c=...` gives them): `../..`
    must stay in the name, and nothing is written outside the output folder."""
    from engine.generation.generator import GenerateConfig, generate

    victim = tmp_path / "victim.png"
    victim.write_bytes(b"the user's file")
    out = tmp_path / "gen"
    config = GenerateConfig(lora=trained_run, steps=1, out=out, prompt="a photo of {token} {class_word} {c}",
                            sweeps={"lora_scale": [1.0], "seed": [0], "c": [f"../../{tmp_path.name}/victim"]})
    result = generate(config, settings)
    assert victim.read_bytes() == b"the user's file"
    plain = re.sub(r"[^A-Za-z0-9._+-]", "_", tmp_path.name)
    assert [g.name for g in result.grids] == [f"grid-c=.._.._{plain}_victim.png"]
    assert all(g.parent == out for g in result.grids)
    assert [p.name for p in tmp_path.glob("*.png")] == ["victim.png"]  # nothing written beside the output folder


# -- likeness web --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def web(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("web") / "home"
    # --server at a port where nothing listens: no TUI session is ever opened by these tests.
    process = subprocess.Popen([sys.executable, "-m", "tui.launcher", "web", "--port", str(port), "--server",
                                f"http://127.0.0.1:{free_port()}"],
                               env={**os.environ, "LIKENESS_HOME": str(home)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url + "/", timeout=5)
            break
        except requests.ConnectionError:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(10)


def _ws_status(url: str, origin: str | None) -> int:
    """The HTTP status the WebSocket handshake to /ws got (101: opened)."""
    import aiohttp

    async def attempt() -> int:
        headers = {"Origin": origin} if origin else {}
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url.replace("http", "ws") + "/ws", headers=headers) as socket:
                    await socket.close()
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    return asyncio.run(attempt())


def test_likeness_web_refuses_other_sites_pages_and_names(web):
    assert requests.get(web + "/", timeout=10).status_code == 200
    assert requests.get(web + "/", headers={"Host": "attacker.example:8080"}, timeout=10).status_code == 403
    # A page on another site opening the TUI session (the screen, and the keyboard):
    assert _ws_status(web, EVIL) == 403
    assert _ws_status(web, None) == 403
    assert _ws_status(web, f"http://attacker.example:{web.rsplit(':', 1)[1]}") == 403


def test_likeness_web_off_loopback_asks_for_the_key_it_printed(tmp_path):
    from tui.web_server import needs_key, refusal

    assert needs_key("0.0.0.0", None) and not needs_key("127.0.0.1", None)
    assert not needs_key("0.0.0.0", "http://127.0.0.1:8080")  # compose: published on loopback only
    names = frozenset({"127.0.0.1", "localhost", "::1", "192.168.1.5"})
    host = {"Host": "192.168.1.5:8080"}
    assert refusal("/", host, {}, {}, names, "k3y") == ("this page needs its key: open the URL `likeness web` "
                                                      "printed", True)
    assert refusal("/", host, {"key": "k3y"}, {}, names, "k3y") is None
    assert refusal("/static/x.js", host, {}, {"likeness_web_key": "k3y"}, names, "k3y") is None
    assert refusal("/", host, {"key": "wrong"}, {}, names, "k3y")[1] is True


# -- the TUI's own engine ------------------------------------------------------------------------

def test_the_tuis_engine_needs_its_token_and_reads_no_system_folder(tmp_path, monkeypatch):
    from engine.settings import Settings
    from tui.engine_link import connect, stop_if_unneeded

    home = tmp_path / "home"
    monkeypatch.delenv("LIKENESS_PHOTO_ROOTS", raising=False)
    link = connect(None, Settings(home=home))
    try:
        state = json.loads((home / "tui-service.json").read_text())
        token_file = Path(state["token_file"])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # no other local user reads it
        assert link.jobs() == []  # the TUI sends it
        answer = requests.get(state["url"] + "/jobs", timeout=10)
        assert answer.status_code == 401  # a page, or another user, without it
        # /etc is nowhere a user keeps photos: refused, and its file names are not listed anywhere.
        answer = requests.post(state["url"] + "/datasets", json={"name": "leak", "photos": "/etc"}, timeout=10,
                               headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
        assert answer.status_code == 422 and "outside the folders" in answer.json()["detail"]
    finally:
        (home / "tui-clients" / str(os.getpid())).unlink(missing_ok=True)  # this test is the TUI that quits
        assert stop_if_unneeded(home / "tui-service.json", grace_s=10)
