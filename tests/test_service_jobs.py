"""Jobs through a real `likeness serve` on a loopback port, training the tiny model for real.

Covers the issue's promises: a train job runs to done and streams progress and sample grids;
the CLI's --server follows it; cancel stops at a step boundary and keeps the checkpoints; a
service killed with -9 marks the job interrupted on restart, and resuming it gives the same LoRA
as an uninterrupted run; reconnecting with Last-Event-ID misses nothing.
"""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file

from engine.cli import main
from engine.training.run_dir import RunDir
from tests.service_helpers import Service, make_home, train_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service_home(tmp_path_factory, tiny_model, dataset, settings):
    return make_home(tmp_path_factory.mktemp("service") / "home", models=settings.models_dir, dataset=dataset)


@pytest.fixture(scope="module")
def service(service_home):
    running = Service(service_home).start()
    yield running
    running.stop()


@pytest.mark.image
def test_cli_train_on_the_service_streams_progress_and_sample_grids(service, capsys):
    code = main(["train", "--server", service.url, "--data", "datasets/astronaut", "--out", "runs/cli",
                 "--base", "tiny", "--steps", "6", "--resolution", "64", "--rank", "4", "--lr", "1e-3",
                 "--sample-every", "3", "--sample-steps", "2", "--checkpoint-every", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "lora: runs/cli/lora.safetensors" in out
    assert "sample grid for step 3: runs/cli/samples/step-000003.png" in err

    job = next(j for j in service.get("/jobs").json() if j["run_dir"] == "runs/cli")
    assert job["state"] == "done" and job["kind"] == "train" and job["progress"]["step"] == 6
    events = service.events(job["id"])
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events if e["type"] != "phase"]
    assert types[:4] == ["queued", "running", "placed", "started"] and types[-1] == "done"
    assert events[2]["data"]["on"] == job["ran_on"] == "local (CPU)"  # where placement sent it, on its row too
    # What the run was doing between steps, stored and streamed like every other event.
    phases = [e["data"] for e in events if e["type"] == "phase" and e["data"]["fraction"] in (None, 0.0)]
    assert [p["name"] for p in phases[:4]] == ["loading", "caching", "sampling", "training"]
    assert phases[2]["text"] == "drawing sample grid 1/3 0%" and (phases[2]["index"], phases[2]["total"]) == (1, 3)
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6]
    assert all(p["total"] == 6 and p["loss"] > 0 and p["seconds_per_step"] > 0 and "eta_seconds" in p
               for p in progress)
    samples = [e["data"] for e in events if e["type"] == "sample_ready"]
    assert [s["step"] for s in samples] == [0, 3, 6]
    # Each grid's measures ride along; the tiny model draws no face, so there is no likeness to follow.
    assert all(s["likeness"] is None and 0 <= s["memorisation"] <= 1 and s["recommended_step"] is None
               for s in samples)
    grid = service.get(samples[1]["url"])
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert grid.content.startswith(b"\x89PNG")

    # A client that saw up to event k and reconnects gets exactly the rest.
    for k in (0, 3, len(events) - 1, len(events)):
        assert service.events(job["id"], last_event_id=k) == events[k:]

    runs = {r["name"]: r for r in service.get("/runs").json()}
    assert runs["cli"]["status"] == "done" and runs["cli"]["steps_done"] == 6 and runs["cli"]["lora_rank"] == 4
    assert runs["cli"]["recommended_step"] is None and "no faces found" in runs["cli"]["recommendation"]
    lora = service.get(runs["cli"]["lora_url"])
    assert lora.status_code == 200 and "attachment" in lora.headers["content-disposition"]
    assert lora.content == (service.home / "runs" / "cli" / "lora.safetensors").read_bytes()
    detail = service.get("/runs/cli").json()
    assert [s["step"] for s in detail["samples"]] == [0, 3, 6] and detail["checkpoints"] == [3]


def test_cancel_stops_at_a_step_boundary_keeps_checkpoints_and_the_stream_resumes(service, capsys):
    job = service.submit("train", train_config("runs/cancelled", steps=500, sample_every=0, checkpoint_every=2))
    first = service.wait_for(job["id"], set(), until=lambda e: e["type"] == "progress" and e["data"]["step"] >= 3)
    # The generator above was closed: this client disconnected mid-run.
    assert main(["cancel", str(job["id"]), "--server", service.url]) == 0
    assert "stopping at its next step" in capsys.readouterr().out
    asked = time.monotonic()
    rest = list(service.stream(job["id"], last_event_id=first[-1]["id"]))
    assert time.monotonic() - asked < 30
    assert rest[-1]["type"] == "cancelled"
    # Reconnected with Last-Event-ID: together the two connections saw every event exactly once.
    assert first + rest == service.events(job["id"])

    done = service.get(f"/jobs/{job['id']}").json()
    assert done["state"] == "cancelled" and done["cancel_requested"]
    run = RunDir(service.home / "runs" / "cancelled")
    assert run.read_run()["status"] == "cancelled"
    stopped_at = run.read_metrics()[-1]["step"]
    assert 3 <= stopped_at < 500 and run.checkpoint_steps() and run.checkpoint_steps()[-1] <= stopped_at
    assert service.post(f"/jobs/{job['id']}/cancel").status_code == 409
    # The folder says which run it holds, and the job's "started" event names it: resume checks the two.
    started = [event for event in first if event["type"] == "started"]
    assert started and started[-1]["data"]["run_id"] == run.read_run()["run_id"]


def test_kill_9_interrupts_the_job_and_resume_gives_the_uninterrupted_lora(tmp_path, settings, tiny_model, dataset,
                                                                         capsys):
    # A home of its own: two services must never share one queue.
    service_home = make_home(tmp_path / "home", models=settings.models_dir, dataset=dataset)
    steps = 40
    config = dict(sample_every=0, checkpoint_every=3, steps=steps)
    first = Service(service_home).start()
    try:
        reference = first.submit("train", train_config("runs/straight", **config))
        ended = first.wait_for(reference["id"], {"done", "failed"})[-1]
        assert ended["type"] == "done", ended

        job = first.submit("train", train_config("runs/killed", **config))
        seen = first.wait_for(job["id"], {"done", "failed"},
                              until=lambda e: e["type"] == "progress" and e["data"]["step"] >= 4)
        assert seen[-1]["type"] == "progress", "the run ended before the service could be killed"
        worker = first.get(f"/jobs/{job['id']}").json()["worker_pid"]
        first.kill()
    finally:
        first.stop()

    # The worker notices its service is gone and exits by itself.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker)
    killed_at = RunDir(service_home / "runs" / "killed").checkpoint_steps()[-1]
    assert killed_at < steps

    second = Service(service_home).start()
    try:
        interrupted = second.get(f"/jobs/{job['id']}").json()
        assert interrupted["state"] == "interrupted" and "resume" in interrupted["error"]
        # The trainer was killed before it could say so: run.json says what the job row says.
        assert RunDir(service_home / "runs" / "killed").read_run()["status"] == "interrupted"
        assert main(["jobs", "--server", second.url]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if "runs/killed" in line)
        assert "interrupted" in row and " local (CPU) " in row  # train jobs say where they ran
        assert main(["resume", str(job["id"]), "--server", second.url]) == 0
        resumed = second.get(f"/jobs/{job['id']}").json()
        assert resumed["state"] == "done" and resumed["attempt"] == 2
        events = second.events(job["id"])
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert any(e["type"] == "log" and f"resumed from checkpoint at step {killed_at}" in e["data"]["message"]
                   for e in events)
    finally:
        second.stop()

    straight, killed = RunDir(service_home / "runs" / "straight"), RunDir(service_home / "runs" / "killed")
    assert [r["step"] for r in killed.read_metrics()] == list(range(1, steps + 1))
    assert [r["loss"] for r in killed.read_metrics()] == pytest.approx([r["loss"] for r in straight.read_metrics()],
                                                                       rel=1e-5)
    wa, wb = load_file(str(straight.lora)), load_file(str(killed.lora))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_a_queue_from_before_placement_keeps_its_jobs_and_learns_where_they_run(tmp_path):
    """Schema 1 had no placement columns: opening it migrates in place, and a resume can move a job."""
    import sqlite3

    from engine.service.sqlite_queue import SqliteJobQueue

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, state TEXT NOT NULL,
                config TEXT NOT NULL, run_dir TEXT, attempt INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL,
                queued_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, error TEXT, log TEXT,
                cancel_requested INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER, progress TEXT, result TEXT,
                last_event_id INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE events (job_id INTEGER NOT NULL REFERENCES jobs (id), id INTEGER NOT NULL,
                type TEXT NOT NULL, time TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, id));
            INSERT INTO jobs (kind, state, config, run_dir, created_at, queued_at, error)
                VALUES ('train', 'failed', '{"steps": 5}', 'runs/old', 't0', 't0', 'ran out of GPU memory');
            PRAGMA user_version=1;
        """)
    queue = SqliteJobQueue(path)
    old = queue.get(1)
    assert (old.where, old.gpu, old.config, old.error, old.ran_on) == ("auto", None, {"steps": 5},
                                                                       "ran out of GPU memory", None)
    # Schema 3 keeps where placement sent an attempt; a new attempt is placed anew.
    queue.add_event(1, "placed", {"where": "local", "gpu": None, "on": "local (CPU)", "reason": "r"})
    assert queue.get(1).ran_on == "local (CPU)"
    moved = queue.requeue(1, {"steps": 5, "resume": True}, where="modal", gpu="A100-40GB")
    assert (moved.state, moved.attempt, moved.where, moved.gpu, moved.ran_on) == ("queued", 2, "modal", "A100-40GB",
                                                                                  None)
    assert queue.events(1)[-1].data == {"attempt": 2, "resume": True, "where": "modal"}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert SqliteJobQueue(path).get(1).where == "modal"  # opening a migrated queue again changes nothing
