"""The engine service under real faults: a database that cannot be written mid-run, a full disk,
a database deleted under the running service. After each, the job ends in a true state, reads
keep answering, and no request gets a 5xx.

The faults are the real thing, nothing of ours is replaced: a file-size limit set on the running
service and worker with prlimit makes every write they try fail (root included, which file modes
would not stop), a small tmpfs filled to the last byte is the full disk, and the file is deleted.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from engine.service.client import report_end
from engine.training.run_dir import RunDir
from tests.service_helpers import Service, make_home, train_config

pytestmark = pytest.mark.slow

FINAL = {"done", "failed", "cancelled", "interrupted"}
TOKEN = "fault-token-0123456789"


def _wait(check, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {check}")


def _job(service: Service, job_id: int) -> dict:
    answer = service.get(f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _reads_answer(service: Service, job_id: int) -> None:
    """Every read route answers while the fault lasts (200, or 404 for what is not there yet)."""
    for path in ("/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/events?follow=false", f"/jobs/{job_id}/log",
                 "/runs", "/datasets", "/system", "/health"):
        answer = service.get(path)
        assert answer.status_code in (200, 404), (path, answer.status_code, answer.text)


class _WriteLimit:
    """A file-size limit of one byte, set on running processes with prlimit (as `ulimit -f` would):
    every write they make past a file's first byte fails, as on a full disk, and reads still work."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple[int, int]] = {}

    def on(self, *pids: int) -> None:
        for pid in pids:
            self.saved[pid] = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, self.saved[pid][1]))

    def off(self, *pids: int) -> None:
        for pid in pids or list(self.saved):
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(pid, resource.RLIMIT_FSIZE, self.saved.pop(pid))


@pytest.fixture
def fault_home(tmp_path, settings, tiny_model, dataset) -> Path:
    return make_home(tmp_path / "home", models=settings.models_dir, dataset=dataset)


def _running(service: Service, job_id: int) -> int:
    service.wait_for(job_id, FINAL, until=lambda e: e["type"] == "progress" and e["data"]["step"] >= 2)
    return _job(service, job_id)["worker_pid"]


def test_unwritable_database_mid_run_holds_the_gpu_slot_and_the_job_ends_once_it_can_be_written(fault_home):
    long = dict(steps=2000, sample_every=0, checkpoint_every=0)
    service = Service(fault_home, token=TOKEN).start()
    limit = _WriteLimit()
    try:
        first = service.submit("train", train_config("runs/first", **long))
        second = service.submit("train", train_config("runs/second", **long))
        third = service.submit("train", train_config("runs/third", **long))
        worker = _running(service, first["id"])
        # Workers get what they need, not the API's token.
        assert b"LIKENESS_TOKEN" not in Path(f"/proc/{worker}/environ").read_bytes()

        # 1. Nothing can be written, and the worker dies without a word: the service keeps its
        #    slot until the end is on record, and the job API keeps answering.
        limit.on(service.process.pid, worker)
        time.sleep(2)
        _reads_answer(service, first["id"])
        for answer in (service.post(f"/jobs/{first['id']}/cancel"), service.post(f"/jobs/{first['id']}/resume"),
                       service.post("/jobs", json={"kind": "train", "config": train_config("runs/more")})):
            assert answer.status_code == 409, answer.text
        os.kill(worker, 9)
        time.sleep(2)  # ten polls of the scheduler
        states = {job["id"]: job["state"] for job in service.get("/jobs").json()}
        assert states == {first["id"]: "running", second["id"]: "queued", third["id"]: "queued"}
        limit.off()
        ended = service.wait_for(first["id"], FINAL)[-1]
        assert ended["type"] == "failed" and "exit code -9" in ended["data"]["reason"], ended
        assert RunDir(fault_home / "runs" / "first").read_run()["status"] != "running"

        # 2. The same fault under a live worker: it fails its run and records that itself once it
        #    can; the service, still unable to write, starts nothing new meanwhile.
        worker = _running(service, second["id"])
        limit.on(service.process.pid, worker)
        time.sleep(3)
        limit.off(worker)
        ended = service.wait_for(second["id"], FINAL)[-1]
        assert ended["type"] == "failed" and ended["data"]["reason"].startswith("disk full ("), ended
        time.sleep(1)
        assert _job(service, third["id"])["state"] == "queued"
        limit.off()
        started = service.wait_for(third["id"], FINAL | {"running"})[-1]
        assert started["type"] == "running" and started["time"] > ended["time"]  # only after the second ended

        service_log = (fault_home / "service.log").read_text()
        assert "Traceback" not in service_log and service_log.count("cannot be used now") <= 5  # not every poll
    finally:
        limit.off()
        service.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 2**16)
                handle.flush()
    return filler


def test_full_disk_fails_the_run_as_disk_full_cleans_up_and_reads_keep_working(small_disk, settings, tiny_model,
                                                                                dataset):
    home = make_home(small_disk / "home", models=settings.models_dir, dataset=dataset)
    service = Service(home).start()
    try:
        # SDXL's checkpoints cannot fit on 24 MB: refused before anything runs, saying why.
        sdxl = service.post("/jobs", json={"kind": "train", "config": train_config(
            "runs/sdxl", base="stabilityai/stable-diffusion-xl-base-1.0", rank=16)})
        assert sdxl.status_code == 409 and sdxl.json()["detail"].startswith("disk full (")
        assert "MB free under LIKENESS_HOME" in sdxl.json()["detail"]

        job = service.submit("train", train_config("runs/full", steps=2000, sample_every=0, checkpoint_every=2))
        service.wait_for(job["id"], FINAL, until=lambda e: e["type"] == "progress" and e["data"]["step"] >= 3)
        filler = _fill(small_disk)
        time.sleep(3)  # the run meets the full disk at its next checkpoint or event
        _reads_answer(service, job["id"])
        refused = service.post("/jobs", json={"kind": "train", "config": train_config("runs/more", steps=2)})
        assert refused.status_code == 409, refused.text
        filler.unlink()

        ended = service.wait_for(job["id"], FINAL)[-1]
        assert ended["type"] == "failed", ended
        assert ended["data"]["reason"].startswith("disk full (") and "MB free under LIKENESS_HOME" in ended["data"]["reason"]
        run = RunDir(home / "runs" / "full")
        assert not list(run.checkpoints.glob(".*partial")) and not list(run.root.glob(".*partial"))
        assert run.checkpoint_steps(), "the checkpoints written before the disk filled are kept"
        log = service.get(f"/jobs/{job['id']}/log").text
        assert "Traceback" in log and "failed: disk full (" in log  # the log is whole, not cut at 4 KB
    finally:
        service.stop()


def test_deleted_database_is_recreated_and_a_job_log_is_never_reused(fault_home):
    (fault_home / "empty").mkdir()
    service = Service(fault_home).start()
    try:
        def failing_job() -> dict:
            job = service.submit("train", train_config("runs/nothing", data="empty", steps=2))
            assert service.wait_for(job["id"], FINAL)[-1]["type"] == "failed"
            return _job(service, job["id"])

        old = failing_job()
        old_log = (fault_home / old["log"]).read_bytes()
        # An empty Last-Event-ID header is no header: the whole stream.
        assert len(list(service.stream(old["id"], last_event_id="", follow=False))) == old["last_event_id"]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{fault_home / 'jobs.sqlite3'}{suffix}").unlink(missing_ok=True)

        assert service.get("/jobs").json() == []
        assert service.get(f"/jobs/{old['id']}").status_code == 404
        new = failing_job()
        assert new["id"] == old["id"] and new["log"] != old["log"]
        assert (fault_home / old["log"]).read_bytes() == old_log
        assert "--- job" in (fault_home / new["log"]).read_text()
    finally:
        service.stop()


def test_a_failed_job_names_its_log_once(capsys):
    reason = "the worker process died (exit code -9); see logs/job-000003.log"
    assert report_end(3, {"type": "failed", "data": {"reason": reason, "log": "logs/job-000003.log"}}) == 1
    assert capsys.readouterr().err.count("logs/job-000003.log") == 1


def test_a_force_job_that_fails_to_load_or_dies_keeps_the_run_it_was_to_replace(tmp_path, trained_run, tiny_model,
                                                                             dataset):
    # The tiny model with half its UNet's weights (a damaged disk): it passes every check, then fails to load.
    home = make_home(tmp_path / "home", dataset=dataset)
    broken = home / "models" / tiny_model.name
    shutil.copytree(tiny_model, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = home / "runs" / "old"
    shutil.copytree(trained_run, out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert RunDir(out).checkpoint_steps()

    service = Service(home).start()
    try:
        job = service.submit("train", train_config("runs/old", force=True, steps=2, sample_every=0))
        ended = service.wait_for(job["id"], FINAL)[-1]
        assert ended["type"] == "failed" and "could not be loaded as SDXL" in ended["data"]["reason"], ended
        assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
        # The checkpoints there are the old run's: another attempt starts over, it does not resume them.
        again = service.post(f"/jobs/{job['id']}/resume")
        assert again.status_code == 200, again.text
        assert again.json()["config"]["force"] is True and again.json()["config"]["resume"] is False

        # That attempt killed with -9 after it set the old run aside (before it could fail to load):
        # the service puts the old run back as it ends the job.
        _wait(lambda: (out / ".replaced" / "moved.json").is_file(), every=0.01)
        os.kill(_job(service, job["id"])["worker_pid"], 9)
        ended = service.wait_for(job["id"], FINAL, last_event_id=again.json()["last_event_id"])[-1]
        assert ended["type"] == "failed" and "exit code -9" in ended["data"]["reason"], ended
        assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
        assert not (out / ".replaced").exists()
    finally:
        service.stop()
