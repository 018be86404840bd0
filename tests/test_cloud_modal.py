"""The Modal path, offline: the App builds without network, and its function bodies run in process.

``InProcessModal`` is the one stand-in: Modal's cloud as a temporary folder (one sub-folder per
Volume) and a thread, calling the App's real functions with ``.local()``. Everything else is real:
the executor, the container's code, the trainer and the tiny model.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import LikenessError, TrainingCancelled
from engine.events import Progress, SampleReady, Started
from engine.placement.cloud.client import DATASET_COMPLETE, modal_error
from engine.placement.cloud.executor import ModalExecutor, dataset_key, run_key
from engine.placement.cloud.remote import STOP
from engine.placement.decision import choose_executor, decide
from engine.placement.executor import LocalExecutor
from engine.placement.gpus import MODAL_GPUS
from engine.training.run_dir import RunDir
from tests.conftest import tiny_train_config

# Modal says so each time a function body runs in process; here that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally")


class _ThreadCall:
    def __init__(self, body, events: queue.Queue, control: queue.Queue):
        self.events, self.control, self.value, self.error = events, control, None, None

        def target():
            try:
                self.value = body()
            except BaseException as error:  # handed to result(), as Modal re-raises a function's error
                self.error = error

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def next_event(self, timeout):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self):
        self.control.put(STOP)

    def cancel(self):
        self.control.put(STOP)  # a thread cannot be killed; the run stops at its next step

    def result(self, timeout=None):
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value

    def close(self):
        pass


class InProcessModal:
    """Modal's cloud in a folder: datasets/, runs/ and cache/ are the three Volumes."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads: list[str] = []
        self.gpus: list[str] = []

    def has_dataset(self, key):
        return (self.root / "datasets" / key / DATASET_COMPLETE).is_file()

    def upload_dataset(self, key, folder):
        shutil.copytree(folder, self.root / "datasets" / key, dirs_exist_ok=True)
        (self.root / "datasets" / key / DATASET_COMPLETE).write_text("")
        self.uploads.append(key)

    def replace_run(self, run_key, folder):
        target = self.root / "runs" / run_key
        shutil.rmtree(target, ignore_errors=True)
        if folder is not None:
            shutil.copytree(folder, target)

    def start_training(self, request, gpu):
        from engine.placement.cloud import modal_app

        self.gpus.append(gpu)
        events, control = queue.Queue(), queue.Queue()
        request = {**request, "root": str(self.root)}
        return _ThreadCall(lambda: modal_app.train.local(request, events, control), events, control)

    def read_run_file(self, run_key, relative):
        return (self.root / "runs" / run_key / relative).read_bytes()

    def download_run(self, run_key, into):
        shutil.copytree(self.root / "runs" / run_key, into, dirs_exist_ok=True)


def assert_same_lora(a: Path, b: Path) -> None:
    wa, wb = load_file(str(RunDir(a).lora)), load_file(str(RunDir(b).lora))
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_app_image_and_volumes_build_without_network():
    import modal

    from engine.placement.cloud import modal_app

    assert modal_app.app.name == "likeness"
    assert isinstance(modal_app.image, modal.Image)
    assert set(modal_app.VOLUMES) == {"/likeness/datasets", "/likeness/runs", "/likeness/cache"}
    for function in (modal_app.train, modal_app.generate):
        assert isinstance(function, modal.Function)
    for gpu in MODAL_GPUS:  # every GPU the placement can pick is a gpu= Modal accepts
        assert isinstance(modal_app.train.with_options(gpu=gpu.name), modal.Function)
    # Generous: twice the estimate of a default run on the slowest GPU.
    slowest = decide(tiny_train_config(Path("d"), Path("o"), base="stabilityai/stable-diffusion-xl-base-1.0",
                                       resolution=1024, steps=500, sample_every=100), "modal", "A10G")
    assert modal_app.TRAIN_TIMEOUT_S > 2 * slowest.estimated_seconds


def test_the_modal_image_is_built_from_the_projects_own_files():
    """Modal reads these lazily, when an app runs, so a wrong path shows only at a user's first offload."""
    from engine.placement.cloud import modal_app

    root = Path(__file__).resolve().parents[1]
    assert modal_app.PYPROJECT == root / "pyproject.toml"
    assert modal_app.IMAGE_PINS == root / "docker" / "image-pins.txt"
    # The Docker image has no source tree: it keeps both files where modal_app looks for them there.
    dockerfile = (root / "Dockerfile").read_text()
    assert "cp pyproject.toml /opt/venv/share/likeness/" in dockerfile
    assert "cp docker/image-pins.txt /opt/venv/share/likeness/docker/" in dockerfile


def test_choose_executor_picks_by_the_decision(tmp_path):
    local = decide(tiny_train_config(tmp_path, tmp_path), "auto", None, [])
    assert isinstance(choose_executor(local), LocalExecutor)
    cloud = decide(tiny_train_config(tmp_path, tmp_path), "modal", "L40S", [])
    executor = choose_executor(cloud, client=InProcessModal(tmp_path))
    assert isinstance(executor, ModalExecutor) and executor.gpu == "L40S"


def test_dataset_key_is_a_content_hash(tmp_path, photos):
    copy = tmp_path / "copy"
    shutil.copytree(photos, copy)
    assert dataset_key(copy) == dataset_key(photos)
    next(p for p in copy.iterdir() if p.is_file()).write_bytes(b"changed")
    assert dataset_key(copy) != dataset_key(photos)
    assert run_key(tmp_path / "my run") == run_key(tmp_path / "my run") != run_key(tmp_path / "other")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, dataset, settings, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    LocalExecutor().train(tiny_train_config(dataset, out), settings)
    return out


@pytest.mark.slow
def test_cloud_run_looks_like_the_local_run(tmp_path, dataset, settings, local_run, monkeypatch):
    # Secrets in the environment must never reach run.json, metrics or events.
    secrets = {"MODAL_TOKEN_ID": "ak-secret-token-id", "MODAL_TOKEN_SECRET": "as-secret-token", "HF_TOKEN": "hf_secret"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    cloud = InProcessModal(tmp_path / "cloud")
    out = tmp_path / "run"
    events = []

    def on_event(event):
        if isinstance(event, SampleReady):  # the grid is already here when the event says so
            assert event.path.is_file() and event.path.parent == out / "samples"
        events.append(event)

    ModalExecutor("A10G", cloud).train(tiny_train_config(dataset, out), settings, on_event)

    assert_same_lora(out, local_run)
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events if isinstance(e, SampleReady)] == [0, 3, 6]
    assert any(isinstance(e, Started) for e in events)
    local, remote = RunDir(local_run), RunDir(out)
    assert sorted(p.name for p in remote.samples.iterdir()) == sorted(p.name for p in local.samples.iterdir())
    assert remote.checkpoint_steps() == local.checkpoint_steps()
    assert [r["loss"] for r in remote.read_metrics()] == pytest.approx([r["loss"] for r in local.read_metrics()])
    record = remote.read_run()
    assert record["status"] == "done" and record["where"] == "modal" and record["modal_gpu"] == "A10G"
    assert record["cost_usd"] > 0 and record["wall_time_s"] > 0 and record["prices_as_of"]
    assert record["config"]["data"] == str(dataset) and record["config"]["out"] == str(out)
    assert local.read_run()["where"] == "local"
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*.json*")) + repr(events)
    for value in secrets.values():
        assert value not in written
    assert cloud.uploads == [dataset_key(dataset)] and cloud.gpus == ["A10G"]

    # The same photos again: no second upload.
    ModalExecutor("A10G", cloud).train(tiny_train_config(dataset, tmp_path / "again", steps=1, sample_every=0,
                                                         checkpoint_every=0), settings)
    assert cloud.uploads == [dataset_key(dataset)]


@pytest.mark.slow
def test_cancel_stops_the_remote_run_and_resume_continues_it(tmp_path, dataset, settings, local_run):
    cloud = InProcessModal(tmp_path / "cloud")
    out = tmp_path / "run"

    def cancel_at_one(step):
        if step == 1:
            raise TrainingCancelled()

    # Cancel early: the container runs on while the stop travels, and must still be running to hear it.
    with pytest.raises(TrainingCancelled):
        ModalExecutor("A10G", cloud).train(tiny_train_config(dataset, out, checkpoint_every=1), settings,
                                           step_hook=cancel_at_one)
    # It stopped at a step boundary, and what it left came home.
    record = RunDir(out).read_run()
    assert record["status"] == "cancelled" and record["where"] == "modal"
    assert RunDir(out).checkpoint_steps() and max(RunDir(out).checkpoint_steps()) < 6

    ModalExecutor("A10G", cloud).train(tiny_train_config(dataset, out, resume=True, checkpoint_every=1), settings)
    assert RunDir(out).read_run()["status"] == "done"
    assert [r["step"] for r in RunDir(out).read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert_same_lora(out, local_run)


class _NoGpuToday(InProcessModal):
    """Modal refusing the function (a quota, a region without the GPU) after the dataset went up."""

    def start_training(self, request, gpu):
        raise LikenessError(f"Modal has no {gpu} for you right now")


@pytest.mark.slow
def test_force_to_modal_keeps_the_old_run_until_the_new_one_takes_a_step(tmp_path, dataset, settings, local_run):
    out = tmp_path / "run"
    shutil.copytree(local_run, out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    config = tiny_train_config(dataset, out, force=True)

    with pytest.raises(LikenessError, match="no A10G"):
        ModalExecutor("A10G", _NoGpuToday(tmp_path / "cloud")).train(config, settings)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before

    ModalExecutor("A10G", InProcessModal(tmp_path / "cloud")).train(config, settings)
    assert RunDir(out).read_run()["where"] == "modal"
    assert not (out / ".replaced").exists() and not (out / ".discarded").exists()


@pytest.mark.slow
def test_a_retry_resumes_from_the_last_committed_checkpoint(tmp_path, dataset, local_run):
    """What Modal's retry does: the function runs again and finds the first attempt's checkpoint."""
    from engine.placement.cloud import modal_app

    root = tmp_path / "cloud"
    key = dataset_key(dataset)
    shutil.copytree(dataset, root / "datasets" / key)
    request = {"config": tiny_train_config(dataset, tmp_path / "x", checkpoint_every=1).model_dump(mode="json"),
               "dataset_key": key, "run_key": "run", "gpu": "A10G", "root": str(root)}
    control = queue.Queue()
    control.put(STOP)  # the first attempt dies after step 1 (and its checkpoint)
    first = modal_app.train.local(request, queue.Queue(), control)
    assert first["status"] == "cancelled"
    assert RunDir(root / "runs" / "run").checkpoint_steps() == [1]

    events = queue.Queue()
    second = modal_app.train.local(request, events, queue.Queue())
    assert second["status"] == "done"
    messages = [events.get() for _ in range(events.qsize())]
    assert any(m["kind"] == "log" and "resuming on Modal from step 1" in m["message"] for m in messages)
    assert [m["step"] for m in messages if m["kind"] == "progress"] == [2, 3, 4, 5, 6]
    run = root / "runs" / "run"
    assert_same_lora(run, local_run)
    first_cost = json.loads((run / "run.json").read_text())["cost_usd"]
    assert first_cost > 0


@pytest.mark.slow
def test_generate_function_draws_with_the_runs_lora(tmp_path, local_run):
    from engine.placement.cloud import modal_app

    root = tmp_path / "cloud"
    shutil.copytree(local_run, root / "runs" / "run")
    result = modal_app.generate.local({"config": {"steps": 2, "sweeps": {"lora_scale": [0, 1]}, "width": 64},
                                       "run_key": "run", "out_name": "g1", "root": str(root)})
    assert result["images"] == 2 and result["out"] == "generations/g1"
    assert len(list((root / "runs" / "run" / "generations" / "g1" / "images").glob("*.png"))) == 2


def test_modal_failures_are_one_clear_line():
    import modal.exception as mx

    assert "modal token new" in str(modal_error(mx.AuthError("Token ID is malformed")))
    assert "quota" in str(modal_error(mx.ResourceExhaustedError("GPU limit reached"), "H100"))
    assert "H100" in str(modal_error(mx.ResourceExhaustedError("x"), "H100"))
    assert "no network" in str(modal_error(ConnectionError("Name or service not known")))
    for error in (mx.AuthError("a\nb"), mx.Error("something\nelse")):
        assert "\n" not in str(modal_error(error))


@pytest.mark.parametrize("setup, needle", [
    ("import sys; sys.modules['modal'] = None", "Modal is not installed: pip install modal"),
    ("", "no Modal token on this machine: run `modal token new`"),
])
def test_modal_missing_or_without_token_is_one_line(tmp_path, setup, needle):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "none.toml"))
    code = f"{setup}\nfrom engine.placement.cloud.client import check_modal_ready\ncheck_modal_ready()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and needle in result.stderr.strip().splitlines()[-1]
