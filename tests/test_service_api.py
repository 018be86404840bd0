"""The service's HTTP surface against a real `likeness serve` (token on, small upload limits):
the token on every request, the right 4xx for bad input, paths that never leave LIKENESS_HOME,
upload limits, prep jobs from a path and from an upload, and a schemathesis fuzz that finds no 500.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.service_helpers import Service, free_port, train_config

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def service(tmp_path_factory, photos):
    home = tmp_path_factory.mktemp("api") / "home"
    home.mkdir()
    # A finished-looking run and a file outside the home, for the path tests.
    run = home / "runs" / "r"
    (run / "samples").mkdir(parents=True)
    (run / "run.json").write_text('{"status": "done", "config": {"rank": 4}, "steps": 6}')
    (run / "samples" / "step-000000.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (home.parent / "secret.txt").write_text("outside")
    (run / "escape").symlink_to(home.parent / "secret.txt")
    # Photos inside the home, for prep from a path the engine can see.
    shutil.copytree(photos, home / "photos")  # a copy: a symlink out of the home is refused, rightly
    running = Service(home, token=TOKEN, env={"LIKENESS_MAX_UPLOAD_MB": "1", "LIKENESS_MAX_UPLOAD_FILES": "5"})
    running.start()
    yield running
    running.stop()


def test_health_is_open_and_everything_else_needs_the_token(service):
    assert service.get("/health", headers={"Authorization": ""}).json() == {"status": "ok"}
    for path in ("/jobs", "/system", "/runs", "/jobs/1/events", "/docs", "/nowhere"):
        assert service.get(path, headers={"Authorization": ""}).status_code == 401, path
        assert service.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert service.get("/jobs").status_code == 200
    answer = service.post("/jobs", json={}, headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 401 and answer.json()["detail"].startswith("missing or wrong token")


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIKENESS_TOKEN", "LIKENESS_TOKEN_FILE")}
    env["LIKENESS_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "LIKENESS_TOKEN" in result.stderr


def test_system_info(service):
    info = service.get("/system").json()
    assert info["device"] in ("cpu", "cuda") and info["versions"]["likeness"] and info["versions"]["torch"]
    assert set(info) >= {"gpu_name", "vram_free_mb", "vram_total_mb", "modal_configured", "home"}


@pytest.mark.parametrize(("body", "status", "field"), [
    ('{"kind": "train", "config": ', 400, None),  # malformed JSON
    ({"kind": "train", "config": train_config("runs/x", steps=-1)}, 422, "config.steps"),
    ({"kind": "train", "config": train_config("runs/x", resolution=100)}, 422, "config.resolution"),
    ({"kind": "train", "config": train_config("runs/x", data="datasets/nobody")}, 422, "config.data"),
    ({"kind": "train", "config": train_config("../outside", data="runs/r")}, 422, "config.out"),
    ({"kind": "train", "config": train_config("/tmp/elsewhere", data="runs/r")}, 422, "config.out"),
    ({"kind": "prep", "config": {"photos": "/", "out": "datasets/x"}}, 422, "config.photos"),
    ({"kind": "bake", "config": {}}, 422, None),
    ({"kind": "train", "config": {**train_config("runs/x"), "colour": "red"}}, 422, "config.colour"),
    ({"kind": "train", "config": train_config("runs/x", device="cpu"), "where": "modal"}, 422, None),
    ({"kind": "train", "config": train_config("runs/x"), "where": "local", "gpu": "H100"}, 422, None),
    ({"kind": "train", "config": train_config("runs/x"), "gpu": "RTX 4090"}, 422, "gpu"),
])
def test_bad_submissions_get_the_right_4xx_with_field_and_reason(service, body, status, field):
    kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, str) else {
        "json": body}
    answer = service.post("/jobs", **kwargs)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in answer.text
    if field is not None:
        assert answer.json()["errors"][0]["field"] == field and detail.startswith(field)


def test_unknown_jobs_and_finished_runs(service):
    assert service.get("/jobs/999").status_code == 404
    assert service.post("/jobs/999/cancel").status_code == 404
    assert service.post("/jobs/999/resume").status_code == 404
    # --gpu names a Modal GPU: it cannot go with where=local, and only Modal's GPUs are names.
    for body in ({"where": "local", "gpu": "A10G"}, {"where": "moon"}, {"gpu": "RTX 4090"}, {"colour": "red"}):
        answer = service.post("/jobs/1/resume", json=body)
        assert answer.status_code == 422 and "\n" not in answer.json()["detail"], (body, answer.text)
    assert service.get("/jobs/999/events").status_code == 404
    assert service.get("/jobs/1/events", headers={"Last-Event-ID": "x"}).status_code in (400, 404)
    # runs/r already holds a finished run: overwriting it needs force.
    answer = service.post("/jobs", json={"kind": "train", "config": train_config("runs/r", data="runs/r")})
    assert answer.status_code == 409 and "force" in answer.json()["detail"]


@pytest.mark.parametrize("path", [
    "/runs/r/files/..%2F..%2Fsecret.txt",
    "/runs/r/files/%2e%2e/%2e%2e/secret.txt",
    "/runs/r/files/%2Fetc%2Fpasswd",
    "/runs/r/files//etc/passwd",
    "/runs/r/files/escape",  # a symlink pointing outside
    "/runs/%2e%2e/files/secret.txt",
    "/runs/..%2F..%2Fetc/files/passwd",
    "/datasets/..%2Fruns%2Fr/manifest",
    "/runs/r/files/samples/..%2F..%2F..%2Fjobs.sqlite3",
])
def test_paths_never_reach_outside_their_folder(service, path):
    answer = service.get(path)
    assert answer.status_code in (403, 404, 422), (path, answer.status_code)
    assert answer.content != b"outside" and b"root:" not in answer.content and b"SQLite" not in answer.content


def test_files_are_served_with_their_content_type(service):
    grid = service.get("/runs/r/files/samples/step-000000.png")
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert service.get("/runs/r/files/run.json").headers["content-type"] == "application/json"
    assert service.get("/runs/r/files/samples/nothing.png").status_code == 404


def test_uploads_over_the_size_or_count_limit_are_refused(service):
    big = [("files", ("big.jpg", b"\xff" * (2 * 2**20), "image/jpeg"))]
    assert service.post("/datasets/big/upload", files=big).status_code == 413
    many = [("files", (f"{i}.jpg", b"\xff\xd8", "image/jpeg")) for i in range(6)]
    answer = service.post("/datasets/many/upload", files=many)
    assert answer.status_code == 413 and "limit is 5" in answer.json()["detail"]
    assert not (service.home / "uploads" / "many").exists()


@pytest.mark.slow
def test_datasets_from_a_path_and_from_an_upload(service, photos):
    options = {"size": 64, "workers": 1}
    job = service.post("/datasets", json={"name": "frompath", "photos": "photos", "options": options})
    assert job.status_code == 201, job.text
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(photos.iterdir()) if p.is_file()]
    upload = service.post("/datasets/uploaded/upload", files=files, data={"options": '{"size": 64, "workers": 1}'})
    assert upload.status_code == 201, upload.text
    for submitted in (job.json(), upload.json()):
        events = service.wait_for(submitted["id"], {"done", "failed", "cancelled", "interrupted"})
        assert events[-1]["type"] == "done", events[-1]
        assert any(e["type"] == "progress" and e["data"].get("stage") for e in events)
    listed = {d["name"]: d for d in service.get("/datasets").json()}
    assert listed["frompath"]["accepted"] == listed["uploaded"]["accepted"] > 0
    report = service.get(listed["uploaded"]["report_url"])
    assert report.status_code == 200 and report.headers["content-type"] == "image/png"
    manifest = service.get("/datasets/uploaded/manifest").json()
    assert manifest["accepted"] == listed["uploaded"]["accepted"]
    # An existing dataset is not replaced without force.
    again = service.post("/datasets", json={"name": "frompath", "photos": "photos", "options": options})
    assert again.status_code == 409


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json", headers=service.headers())


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzzed_requests_never_get_a_500(case, service):
    # Event streams of a job that exists would follow it; the fuzz only needs their answer's status.
    if case.path.endswith("/events"):
        case.query = {**(case.query or {}), "follow": "false"}
    case.call_and_validate(base_url=service.url, headers=service.headers(), checks=[not_a_server_error],
                           timeout=30)


def test_a_refused_photo_folder_names_the_allowed_folders_and_how_to_add_one(service, photos):
    answer = service.post("/datasets", json={"name": "elsewhere", "photos": str(photos), "options": {}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert str(photos) in detail and str(service.home) in detail
    assert "add its folder to LIKENESS_PHOTO_ROOTS" in detail
