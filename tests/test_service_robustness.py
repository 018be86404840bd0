"""The service against awkward clients and stuck workers, over real HTTP to a real `likeness serve`:
one name rule at submit, HEAD, a 413 that says its reason once, deeply nested upload options, slow
clients that send headers a byte at a time, and a worker stopped with SIGSTOP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.service_helpers import Service, train_config

# What our own clients send with a form post to a tokenless service (a web page cannot add it).
OUR_CLIENT = {"X-Likeness-Client": "1"}


@pytest.fixture(scope="module")
def service(tmp_path_factory, photos, dataset):
    home = tmp_path_factory.mktemp("robust") / "home"
    (home / "datasets").mkdir(parents=True)
    shutil.copytree(dataset, home / "datasets" / "astronaut")
    # Sixteen photos: enough that prep's pool workers are busy for a while.
    for copy in range(4):
        shutil.copytree(photos, home / "photos" / f"set{copy}")
    running = Service(home, env={"LIKENESS_CANCEL_GRACE_S": "1"}).start()
    yield running
    running.stop()


@pytest.mark.parametrize("name", ["a..b", "x" * 120])
def test_a_name_the_listing_cannot_read_back_is_refused_at_submit(service, name):
    answer = service.post("/datasets", json={"name": name, "photos": "photos"})
    assert answer.status_code == 422, answer.text
    answer = service.post("/jobs", json={"kind": "train", "config": train_config(f"runs/{name}")})
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "config.out", answer.text
    answer = service.post("/jobs", json={"kind": "prep", "config": {"photos": "photos", "out": f"datasets/{name}"}})
    assert answer.status_code == 422, answer.text
    answer = service.post(f"/datasets/{name}/upload", files={"files": ("a.jpg", b"x")}, headers=OUR_CLIENT)
    assert answer.status_code == 422, answer.text
    assert not (service.home / "runs" / name).exists() and not (service.home / "uploads" / name).exists()


def test_head_answers_on_every_get_route(service):
    for path in ("/health", "/jobs", "/runs", "/datasets", "/datasets/astronaut/report"):
        get, head = service.get(path), requests.head(service.url + path, timeout=30)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    assert requests.head(service.url + "/jobs/999", timeout=30).status_code == 404


def test_a_streamed_body_over_the_limit_says_413_once(service):
    def chunks():  # no Content-Length: the limit is found while the body streams in
        for _ in range(3):
            yield b" " * 2**19

    answer = service.post("/jobs", data=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("request body over the limit"), answer.text


def test_upload_options_nested_100000_deep_are_a_4xx(service):
    answer = service.post("/datasets/deep/upload", files={"files": ("a.jpg", b"x")}, headers=OUR_CLIENT,
                          data={"options": "[" * 100_000 + "]" * 100_000})
    assert answer.status_code == 422 and "options" in answer.text, answer.text


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_stopped_worker_is_said_and_its_cancel_ends_its_whole_process_group(service):
    first = service.post("/datasets", json={"name": "stuck", "photos": "photos", "options": {"workers": 2, "size": 64}})
    assert first.status_code == 201, first.text
    job = first.json()["id"]
    deadline = time.monotonic() + 120
    pid, children = None, []
    while time.monotonic() < deadline:  # until prep's pool is up: its workers and the resource tracker
        pid = service.get(f"/jobs/{job}").json()["worker_pid"]
        children = _children(pid) if pid else []
        if len(children) >= 2:
            break
        time.sleep(0.05)
    assert len(children) >= 2, "prep's pool never started"
    os.kill(pid, signal.SIGSTOP)
    try:
        second = service.post("/datasets", json={"name": "next", "photos": "photos/set0", "options": {"size": 64}})
        assert second.status_code == 201, second.text
        time.sleep(1.5)
        stalled = service.get(f"/jobs/{job}").json()
        assert stalled["state"] == "running" and "no progress for" in stalled["stalled"], stalled
        assert "stopped" in stalled["stalled"]
        waiting = service.get(f"/jobs/{second.json()['id']}").json()
        assert waiting["state"] == "queued" and f"waits for job {job}" in waiting["waiting"], waiting
        assert "stopped" in waiting["waiting"]
        listed = {j["id"]: j for j in service.get("/jobs").json()}
        assert listed[job]["stalled"] == stalled["stalled"]
        assert service.post(f"/jobs/{job}/cancel").status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in (pid, *children)):
            time.sleep(0.1)
        left = [p for p in (pid, *children) if _alive(p)]
        assert not left, f"still alive after the cancel: {left}"
        while time.monotonic() < deadline and service.get(f"/jobs/{job}").json()["state"] == "running":
            time.sleep(0.1)  # reaped at the runner's next poll
        assert service.get(f"/jobs/{job}").json()["state"] == "cancelled"
    finally:
        for p in (pid, *children):  # never leave a stopped process behind, whatever failed
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    service.post(f"/jobs/{second.json()['id']}/cancel")


@pytest.fixture
def small_service(tmp_path):
    # 128 open files, as a small container might have, and a short header deadline for the test.
    (tmp_path / "home").mkdir()
    running = Service(tmp_path / "home", env={"LIKENESS_HEADER_TIMEOUT_S": "2"}, open_files=128).start()
    yield running
    running.stop()


def test_slow_clients_neither_starve_the_service_nor_fill_its_log(small_service):
    slow = []
    try:
        for _ in range(150):  # more than the open files allow
            connection = socket.create_connection(("127.0.0.1", small_service.port), timeout=5)
            connection.sendall(b"GET /health HTTP/1.1\r\nHo")  # and never the rest
            slow.append(connection)
        started = time.monotonic()
        assert requests.get(small_service.url + "/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 3
        # Each slow one is closed by the deadline (or to make room): the server ends it, not the client.
        probe = slow[-1]
        probe.settimeout(10)
        assert probe.recv(100) == b""
        log = (small_service.home / "service.log").read_text()
        assert log.count("out of system resource") <= 1, log[-2000:]
        assert len(log) < 20_000
    finally:
        for connection in slow:
            connection.close()
    assert json.loads(requests.get(small_service.url + "/health", timeout=5).text) == {"status": "ok"}
