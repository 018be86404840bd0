"""One LIKENESS_HOME, one writer: a second service, the TUI and the CLI beside a running one; resuming
a job whose run folder another job has taken; replacing a dataset jobs use; uploads that clash; a
database another program keeps locked.
"""

from __future__ import annotations

import fcntl
import io
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from engine.service.sqlite_queue import DB_FILENAME, SqliteJobQueue
from tests.service_helpers import Service, free_port, make_home, train_config

UPLOADER = {"X-Likeness-Client": "1"}  # what our own clients send with a form post to a tokenless service


@pytest.fixture(scope="module")
def busy_home(tmp_path_factory, settings, tiny_model, dataset, photos):
    home = make_home(tmp_path_factory.mktemp("one-home") / "home", models=settings.models_dir, dataset=dataset)
    # A run job 1 started, which job 2 later replaced (with force) and finished: written before the
    # service starts, as two earlier sessions would have left them.
    queue = SqliteJobQueue(home / DB_FILENAME)
    for job_id, run_id in ((1, "run-of-job-1"), (2, "run-of-job-2")):
        config = {**train_config(str(home / "runs" / "shared"), seed=job_id),
                  "data": str(home / "datasets" / "astronaut")}
        queue.submit("train", config, "runs/shared")
        assert queue.claim_next(("train",)).id == job_id
        queue.add_event(job_id, "started", {"first_step": 0, "total": 6, "run_id": run_id})
        queue.finish(job_id, 1, "cancelled" if job_id == 1 else "done")
    (home / "runs" / "shared").mkdir(parents=True)
    (home / "runs" / "shared" / "run.json").write_text(
        '{"status": "done", "run_id": "run-of-job-2", "seed": 2, "steps": 6, "started_at": "2026-01-01T00:00:00"}')
    return home


@pytest.fixture(scope="module")
def service(busy_home, photos):
    running = Service(busy_home, env={"LIKENESS_PHOTO_ROOTS": str(photos.parent),
                                      "LIKENESS_CANCEL_GRACE_S": "1"}).start()
    yield running
    running.stop()


def test_a_second_service_on_the_home_refuses_in_one_line_and_the_first_goes_on(service):
    # On a port of its own, and on the first one's (both left at the default, say): the same answer.
    for port in (free_port(), service.port):
        second = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", str(port)],
                                env={**os.environ, "LIKENESS_HOME": str(service.home)}, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"another likeness service already runs on LIKENESS_HOME={service.home} at {service.url}" in lines[0]
    assert service.get("/jobs/1").json()["state"] == "cancelled"  # nothing of the first was touched
    assert service.get("/health").status_code == 200


def test_the_tui_and_the_cli_use_the_service_running_on_the_home(service, settings):
    from engine.settings import Settings
    from tui.engine_link import connect

    link = connect(None, Settings(home=service.home))
    assert link.client.url == service.url and link.process is None  # no engine of its own
    assert not (service.home / "tui-service.json").exists()
    if _listening(8000):
        pytest.skip("something listens on the default port here; the CLI would rightly use it")
    env = {key: value for key, value in os.environ.items() if key not in ("LIKENESS_SERVER", "LIKENESS_TOKEN")}
    listed = subprocess.run([sys.executable, "-m", "engine", "jobs"], capture_output=True, text=True, timeout=120,
                            env={**env, "LIKENESS_HOME": str(service.home)})
    assert listed.returncode == 0, listed.stderr
    assert "cancelled" in listed.stdout and "runs/shared" in listed.stdout


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_resuming_a_job_whose_run_folder_another_job_took_is_409(service):
    answer = service.post("/jobs/1/resume")
    assert answer.status_code == 409, answer.text
    assert "now holds another run" in answer.json()["detail"]
    assert service.get("/jobs/1").json()["state"] == "cancelled"
    assert '"run_id": "run-of-job-2"' in (service.home / "runs" / "shared" / "run.json").read_text()


def test_a_dataset_is_not_replaced_under_a_job_that_uses_it(service, photos):
    job = service.submit("train", train_config("runs/uses-it", steps=1000, sample_every=0, checkpoint_every=0))
    try:
        answer = service.post("/datasets", json={"name": "astronaut", "photos": str(photos),
                                                 "options": {"force": True}})
        assert answer.status_code == 409, answer.text
        assert "used by" in answer.json()["detail"] and f"job {job['id']}" in answer.json()["detail"]
        with (sorted(photos.iterdir())[0]).open("rb") as photo:
            answer = service.post("/datasets/astronaut/upload", files={"files": ("a.jpg", photo)},
                                  data={"options": '{"force": true}'}, headers=UPLOADER)
        assert answer.status_code == 409
    finally:
        service.post(f"/jobs/{job['id']}/cancel")
    deadline = time.monotonic() + 60
    while service.get(f"/jobs/{job['id']}").json()["state"] not in ("cancelled", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (service.home / "datasets" / "astronaut" / "manifest.json").is_file()


def test_every_uploaded_file_is_kept_under_a_name_of_its_own(service):
    files = [("files", (name, io.BytesIO(name.encode()))) for name in ("a.jpg", "2-a.jpg", "sub/a.jpg",
                                                                        "x" * 300 + ".jpg")]
    answer = service.post("/datasets/names/upload", files=files, headers=UPLOADER)
    assert answer.status_code == 201, answer.text
    stored = sorted(p.name for p in (service.home / "uploads" / "names").iterdir())
    assert len(stored) == 4 and "a.jpg" in stored and "2-a.jpg" in stored and "a-2.jpg" in stored
    contents = {(service.home / "uploads" / "names" / name).read_bytes() for name in stored}
    assert contents == {b"a.jpg", b"2-a.jpg", b"sub/a.jpg", b"x" * 300 + b".jpg"}


def test_an_upload_while_another_to_the_same_name_is_in_progress_is_409(service):
    # Another uploader (here, this process) holds the name's upload lock as a running upload does.
    (service.home / "uploads").mkdir(exist_ok=True)
    with open(service.home / "uploads" / ".rival.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        answer = service.post("/datasets/rival/upload", files={"files": ("a.jpg", b"a")}, headers=UPLOADER)
    assert answer.status_code == 409 and "in progress" in answer.json()["detail"]
    assert not (service.home / "uploads" / "rival").exists()


def test_an_upload_that_fails_half_way_keeps_the_earlier_one(tmp_path):
    from engine.service.submission import store_upload

    store_upload(tmp_path, "me", [("a.jpg", io.BytesIO(b"earlier"))], max_files=10)

    class Broken(io.RawIOBase):
        def readinto(self, _buffer):
            raise OSError("connection reset")

    with pytest.raises(OSError):
        store_upload(tmp_path, "me", [("b.jpg", io.BytesIO(b"new")), ("c.jpg", Broken())], max_files=10)
    assert [p.name for p in (tmp_path / "uploads" / "me").iterdir()] == ["a.jpg"]
    assert (tmp_path / "uploads" / "me" / "a.jpg").read_bytes() == b"earlier"
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == ["me"]  # and no half-written folder


def test_a_locked_database_holds_a_jobs_events_and_says_why(tmp_path):
    from engine.events import Log
    from engine.service.errors import DatabaseBusy
    from engine.service.runner import EventRecorder

    queue = SqliteJobQueue(tmp_path / DB_FILENAME, busy_timeout_s=0.2)
    job = queue.submit("prep", {}, None)
    recorder = EventRecorder(queue, job, tmp_path, cancel_on_progress=False)
    recorder.BUSY_RETRY_S = 0  # try again at every event here, not every ten seconds
    rival = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)  # a database browser, a backup
    rival.execute("BEGIN EXCLUSIVE")
    try:
        recorder(Log("one"))  # no exception: the job goes on
        recorder(Log("two"))
        with pytest.raises(DatabaseBusy, match="locked by another program") as refused:
            queue.add_event(job.id, "log", {"message": "direct"})
        assert "free space" not in str(refused.value)  # not the cause here
    finally:
        rival.execute("ROLLBACK")
        rival.close()
    recorder(Log("three"))
    messages = [event.data.get("message") for event in queue.events(job.id) if event.type == "log"]
    assert messages == ["one", "two", "three"]  # none lost, in order
