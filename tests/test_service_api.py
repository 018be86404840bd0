"""The service's HTTP surface against a real `likeness serve` (token on, small upload limits):
the token on every request, the right 4xx for bad input, paths that never leave LIKENESS_HOME,
upload limits, prep jobs from a path and from an upload, and a schemathesis fuzz that finds no 500.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
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
    # A run and a dataset outside the home, linked in: they must not be served.
    outside_run = home.parent / "outside-run"
    outside_run.mkdir()
    (outside_run / "run.json").write_text('{"status": "done", "secret": "outside"}')
    (outside_run / "lora.safetensors").write_text("outside")
    (outside_run / "metrics.jsonl").write_text('{"step": 1, "secret": "outside"}\n')
    (home / "runs" / "linked").symlink_to(outside_run, target_is_directory=True)
    outside_set = home.parent / "outside-dataset"
    outside_set.mkdir()
    (outside_set / "manifest.json").write_text('{"accepted": 1, "secret": "outside"}')
    (outside_set / "report.png").write_text("outside")
    (home / "datasets").mkdir()
    (home / "datasets" / "linked").symlink_to(outside_set, target_is_directory=True)
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
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        # Kept cheap: without an NVIDIA device there is nothing for torch to find, and importing it
        # took over 10 s on a loaded machine.
        assert "libtorch" not in Path(f"/proc/{service.process.pid}/maps").read_text()


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


@pytest.mark.parametrize("path", [
    "/runs/linked", "/runs/linked/lora", "/runs/linked/metrics", "/runs/linked/files/run.json",
    "/datasets/linked", "/datasets/linked/manifest", "/datasets/linked/report", "/datasets/linked/files/manifest.json",
])
def test_run_and_dataset_folders_linked_from_outside_are_not_served(service, path):
    answer = service.get(path)
    assert answer.status_code == 404, (path, answer.status_code)
    assert b"outside" not in answer.content


def test_lists_leave_out_folders_linked_from_outside(service):
    assert "linked" not in {run["name"] for run in service.get("/runs").json()}
    assert "linked" not in {dataset["name"] for dataset in service.get("/datasets").json()}


NUL = "a\x00b"
LONG = "x" * 300


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "train", "config": train_config(NUL, data="runs/r")}, "config.out"),
    ({"kind": "train", "config": train_config("runs/x", data=NUL)}, "config.data"),
    ({"kind": "train", "config": train_config("runs/x", base=f"models/{NUL}")}, "config.base"),
    ({"kind": "generate", "config": {"lora": NUL, "out": "runs/g"}}, "config.lora"),
    ({"kind": "generate", "config": {"out": f"runs/{NUL}", "base": "tiny"}}, "config.out"),
    ({"kind": "prep", "config": {"photos": NUL, "out": "datasets/x"}}, "config.photos"),
    ({"kind": "prep", "config": {"photos": "photos", "reference": NUL, "out": "datasets/x"}}, "config.reference"),
    ({"kind": "prep", "config": {"photos": "photos", "out": f"datasets/{NUL}"}}, "config.out"),
    ({"kind": "train", "config": train_config("runs/x", data=LONG)}, "config.data"),
    ({"kind": "train", "config": train_config(f"runs/{LONG}", data="runs/r")}, "config.out"),
    ({"kind": "generate", "config": {"lora": f"runs/{LONG}", "out": "runs/g"}}, "config.lora"),
    ({"kind": "prep", "config": {"photos": LONG, "out": "datasets/x"}}, "config.photos"),
])
def test_nul_bytes_and_overlong_names_in_paths_are_422_with_the_field(service, body, field):
    answer = service.post("/jobs", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field


def test_nul_bytes_and_overlong_names_elsewhere_are_4xx(service):
    assert service.post("/datasets", json={"name": "x", "photos": NUL}).status_code == 422
    assert service.post("/datasets", json={"name": "x", "photos": LONG}).status_code == 422
    for path in ("/runs/r/files/a%00b", f"/runs/r/files/{LONG}", f"/runs/r/files/samples/{LONG}.png",
                 "/datasets/a%00b", "/runs/a%00b/lora", f"/datasets/linked/files/{LONG}"):
        answer = service.get(path)
        assert 400 <= answer.status_code < 500, (path, answer.status_code)


def test_a_body_over_the_limit_without_content_length_is_413(service):
    def chunks():  # chunked transfer encoding: no Content-Length to refuse it by
        for _ in range(64):
            yield b" " * 2**16

    answer = service.post("/jobs", data=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text


def _post_json(service, path: str, body: dict) -> requests.Response:
    # As JavaScript's and Python's JSON write them: Infinity and NaN are bare words (requests refuses them).
    return service.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("config", "field"), [
    (train_config("runs/x", seed=2**70), "config.seed"),
    (train_config("runs/x", alpha=float("inf")), "config.alpha"),
    (train_config("runs/x", lr=float("nan")), "config.lr"),
    (train_config("runs/x", steps=True), "config.steps"),
    (train_config("runs/x", steps=1e9), "config.steps"),
    (train_config("runs/x", steps=10**9), "config.steps"),
    (train_config("runs/x", resolution=2**40), "config.resolution"),
    (train_config("runs/x", sample_seeds=[2**70]), "config.sample_seeds.0"),
])
def test_numbers_that_would_break_a_run_are_422_with_the_field(service, config, field):
    answer = _post_json(service, "/jobs", {"kind": "train", "config": config})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field


@pytest.mark.parametrize(("config", "field"), [
    ({"seed": 2**70}, "config.seed"),
    ({"guidance": float("inf")}, "config.guidance"),
    ({"lora_scale": float("inf")}, "config.lora_scale"),
    ({"steps": True}, "config.steps"),
    ({"steps": 10**9}, "config.steps"),
    ({"width": 2**40}, "config.width"),
    ({"sweeps": {"age": list(range(100_000))}, "prompt": "{token} at {age}"}, "config.sweeps"),
    ({"sweeps": {"seed": [1, 2**70]}}, "config.sweeps"),
    ({"sweeps": {"guidance": [float("inf")]}}, "config.sweeps"),
    ({"sweeps": {"steps": [True]}}, "config.sweeps"),
])
def test_generate_numbers_are_bounded_at_submit(service, config, field):
    answer = _post_json(service, "/jobs", {"kind": "generate", "config": {"out": "runs/g", "base": "tiny", **config}})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field


def test_a_base_inside_the_home_or_a_models_root_or_a_repo_id_is_kept(tmp_path):
    from engine.service.errors import InvalidField
    from engine.service.submission import allowed_base

    home, models = tmp_path / "home", tmp_path / "models"
    (home / "models" / "mine").mkdir(parents=True)
    (models / "sdxl.safetensors").parent.mkdir()
    (models / "sdxl.safetensors").write_bytes(b"")
    assert allowed_base("models/mine", home, (), "base") == str((home / "models" / "mine").resolve())
    assert allowed_base(str(models / "sdxl.safetensors"), home, (models,), "base") == str(
        (models / "sdxl.safetensors").resolve())
    assert allowed_base("stabilityai/stable-diffusion-xl-base-1.0", home, (), "base") == \
        "stabilityai/stable-diffusion-xl-base-1.0"
    assert allowed_base("tiny", home, (), "base") == "tiny"
    with pytest.raises(InvalidField, match="outside the allowed roots"):
        allowed_base(str(models / "sdxl.safetensors"), home, (), "base")


def test_an_empty_base_is_422(service):
    answer = service.post("/jobs", json={"kind": "train", "config": train_config("runs/x", data="runs/r", base=" ")})
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "config.base"


@pytest.mark.parametrize("base", ["/etc", "/nonexistent/model", "../../../etc/passwd", "../outside-run",
                                  "runs/linked", "/etc/passwd.safetensors"])
def test_a_base_outside_the_allowed_roots_is_422_and_says_nothing_of_what_is_there(service, base):
    for kind, config in (("train", train_config("runs/x", base=base)), ("generate", {"out": "runs/g", "base": base})):
        answer = service.post("/jobs", json={"kind": kind, "config": config})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith("config.base: ") and "outside the allowed roots" in detail
        assert "LIKENESS_MODEL_ROOTS" in detail and "model_index" not in detail


def test_method_not_allowed_lists_every_method_of_the_path(service):
    answer = requests.delete(service.url + "/jobs", headers=service.headers(), timeout=30)
    assert answer.status_code == 405
    assert {m.strip() for m in answer.headers["allow"].split(",")} >= {"GET", "POST"}
    answer = requests.put(service.url + "/jobs/1/cancel", headers=service.headers(), timeout=30)
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"


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
