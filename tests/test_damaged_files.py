"""One damaged file never breaks a listing: a real `likeness serve` over a home whose run and dataset
folders hold the files a full disk, a sync tool or a hand edit leave behind. Each damaged folder is
listed with why; the others are listed as they are; nothing answers 500.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service_helpers import Service

GOOD_RUN = {"status": "done", "steps": 6, "steps_done": 6, "config": {"lr": 0.001, "resolution": 64}, "seed": 1}
DAMAGED_RUNS = {  # name: (run.json bytes, what the reason says)
    "list": (b"[1]", "holds a list"),
    "latin1": (b'{"status": "done", "name": "\xe9t\xe9"}', "not UTF-8"),
    "many": (json.dumps({**GOOD_RUN, "steps": "many"}).encode(), "steps"),
    "noconfig": (json.dumps({**GOOD_RUN, "config": None}).encode(), "config"),
}
GOOD_MANIFEST = {"photos": "photos", "size": 64, "accepted": 4, "rejected": {}, "instance_prompt": "a photo"}
DAMAGED_DATASETS = {
    "empty-list": (b"[]", "holds a list"),
    "big": (json.dumps({**GOOD_MANIFEST, "size": "big"}).encode(), "size"),
    "latin1": (b'{"photos": "\xe9"}', "not UTF-8"),
}


def _home(root: Path) -> Path:
    home = root / "home"
    runs, datasets = home / "runs", home / "datasets"
    good = runs / "good"
    (good / "samples").mkdir(parents=True)
    (good / "checkpoints" / "step-000003").mkdir(parents=True)
    (good / "checkpoints" / "step-000003" / "state.json").write_text("{}")
    (good / "checkpoints" / "step-000003-old").mkdir()  # a user's renamed copy: not a step
    (good / "checkpoints" / "step-000003-old" / "state.json").write_text("{}")
    (good / "run.json").write_text(json.dumps(GOOD_RUN))
    (good / "samples" / "step-000002.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (good / "samples" / "step-000002 (copy).png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (good / "samples" / "step-000002.json").write_text("[]")
    # A line that is JSON but no step, one that is not UTF-8, and the real rows around them.
    (good / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 0.5}\n1\n\xff\xfe\n{"step": 2, "loss": 0.4}\n')
    for name, (data, _) in DAMAGED_RUNS.items():
        (runs / name).mkdir()
        (runs / name / "run.json").write_bytes(data)
    (datasets / "good").mkdir(parents=True)
    (datasets / "good" / "manifest.json").write_text(json.dumps(GOOD_MANIFEST))
    for name, (data, _) in DAMAGED_DATASETS.items():
        (datasets / name).mkdir()
        (datasets / name / "manifest.json").write_bytes(data)
    return home


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    running = Service(_home(tmp_path_factory.mktemp("damaged"))).start()
    yield running
    running.stop()


def test_runs_list_every_run_and_says_which_is_damaged_and_why(service):
    answer = service.get("/runs")
    assert answer.status_code == 200, answer.text
    runs = {run["name"]: run for run in answer.json()}
    assert set(runs) == {"good", *DAMAGED_RUNS}
    assert runs["good"]["damaged"] is None and runs["good"]["steps"] == 6 and runs["good"]["lr"] == 0.001
    for name, (_, why) in DAMAGED_RUNS.items():
        assert why in (runs[name]["damaged"] or ""), (name, runs[name])
    # What could be read of a run with one bad field still shows.
    assert runs["many"]["steps"] is None and runs["many"]["seed"] == 1


def test_datasets_list_every_dataset_and_say_which_is_damaged(service):
    answer = service.get("/datasets")
    assert answer.status_code == 200, answer.text
    datasets = {d["name"]: d for d in answer.json()}
    assert set(datasets) == {"good", *DAMAGED_DATASETS}
    assert datasets["good"]["damaged"] is None and datasets["good"]["accepted"] == 4
    for name, (_, why) in DAMAGED_DATASETS.items():
        assert why in (datasets[name]["damaged"] or ""), (name, datasets[name])
    answer = service.get("/datasets/empty-list/manifest")
    assert answer.status_code == 409 and "damaged" in answer.json()["detail"]


def test_a_run_with_stray_files_and_bad_lines_shows_what_it_has(service):
    answer = service.get("/runs/good")
    assert answer.status_code == 200, answer.text
    detail = answer.json()
    assert [s["step"] for s in detail["samples"]] == [2] and detail["samples"][0]["likeness"] is None
    assert detail["checkpoints"] == [3]
    metrics = service.get("/runs/good/metrics")
    assert metrics.status_code == 200 and [row["step"] for row in metrics.json()] == [1, 2]
    for name in DAMAGED_RUNS:
        answer = service.get(f"/runs/{name}")
        assert answer.status_code == 200 and answer.json()["summary"]["damaged"], (name, answer.text)


def test_the_cli_says_a_run_is_damaged_in_one_line(service):
    result = subprocess.run([sys.executable, "-m", "engine", "export", str(service.home / "runs" / "list")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "damaged: run.json holds a list" in result.stderr


def test_the_runs_screen_marks_a_damaged_run():
    from tui.screens.runs import run_row

    row = run_row({"name": "x", "status": None, "damaged": "run.json holds a list, not an object"})
    assert row[1] == "damaged"
