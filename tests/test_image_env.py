"""The Docker image's environment, checked where it can be: on the CPU, in `make image-venv`.

`make test-image` (and so `.ci/run`) runs the tests marked `image` on a virtual environment that
docker/install.sh built exactly as the Dockerfile does (STACK=image: docker/image-pins.txt's torch
CUDA build, xformers and bitsandbytes), with the test tools held to its versions. The tests here
that need that environment say so (LIKENESS_IMAGE_ENV=1, set by the Makefile) and fail rather
than skip under it; the rest run in the main suite too.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

import engine
import tui
from engine.errors import LikenessError
from engine.service.cuda_check import NO_DEVICE, no_cuda_line, no_cuda_reason
from engine.training.run_dir import RunDir
from engine.training.trainer import train
from tests.conftest import tiny_train_config
from tests.service_helpers import Service, make_home

ROOT = Path(__file__).resolve().parents[1]
IN_IMAGE_ENV = bool(os.environ.get("LIKENESS_IMAGE_ENV"))
image_env_only = pytest.mark.skipif(not IN_IMAGE_ENV, reason="needs the image's environment: make test-image")


def image_pins() -> dict[str, str]:
    """docker/image-pins.txt as {package: version}, with the CUDA build under "cuda"."""
    pins = {}
    for line in (ROOT / "docker" / "image-pins.txt").read_text().splitlines():
        if line.startswith("# cuda:"):
            pins["cuda"] = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


@pytest.mark.image
@image_env_only
def test_the_image_environment_has_exactly_the_pinned_gpu_stack():
    import bitsandbytes
    import torch
    import xformers
    import xformers.ops  # noqa: F401  the attention kernels diffusers calls, not only the package
    from bitsandbytes.optim import AdamW8bit  # noqa: F401

    pins = image_pins()
    # The test tools went in after the runtime, held to its versions: nothing moved.
    assert {name: metadata.version(name) for name in ("torch", "xformers", "bitsandbytes")} == \
           {name: pins[name] for name in ("torch", "xformers", "bitsandbytes")}
    assert torch.version.cuda == pins["cuda"]
    assert xformers.__version__ == pins["xformers"] and bitsandbytes.__version__ == pins["bitsandbytes"]


@pytest.mark.image
@image_env_only
def test_every_engine_and_tui_module_imports_on_the_image_torch():
    names = sorted(m.name for package in (engine, tui)
                   for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
                   if not m.name.endswith("__main__"))
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(names) > 50


@pytest.mark.image
@pytest.mark.slow
def test_on_the_cpu_the_run_takes_sdpa_and_torch_adamw_even_with_xformers_and_bitsandbytes_there(
        trained_run, tmp_path, dataset, settings, tiny_model):
    if IN_IMAGE_ENV:  # both are installed here, so the CPU's choice is a choice, not a fallback
        import bitsandbytes  # noqa: F401
        import xformers  # noqa: F401
    record = RunDir(trained_run).read_run()
    assert record["attention"] == "sdpa"
    assert record["savers"]["optimizer"] == "adamw"
    with pytest.raises(LikenessError, match="xformers needs a CUDA GPU"):
        train(tiny_train_config(dataset, tmp_path / "run", attention="xformers"), settings)


@pytest.mark.image
def test_torchs_old_driver_message_becomes_one_line_naming_the_version_and_the_fix():
    # torch 2.10's own words on a driver older than its CUDA 12.8 build (a CUDA 12.2 driver here).
    message = ("CUDA initialization: The NVIDIA driver on your system is too old (found version 12020). "
               "Please update your GPU driver by downloading and installing a new version from the URL: "
               "http://www.nvidia.com/Download/index.aspx Alternatively, go to: https://pytorch.org to "
               "install a PyTorch version that has been compiled with your version of the CUDA driver. "
               "(Triggered internally at /pytorch/c10/cuda/CUDAFunctions.cpp:119.)")
    reason = no_cuda_reason("12.8", False, [message])
    assert reason == ("torch's CUDA 12.8 build: The NVIDIA driver on your system is too old (found version "
                      "12020); update the NVIDIA driver to R570 or newer")
    assert no_cuda_reason("12.8", True, []) is None
    assert no_cuda_reason("12.8", False, ["CUDA initialization: Found no NVIDIA driver on your system. Please "
                                          "check that you have an NVIDIA GPU and installed a driver"]) == \
        "torch's CUDA 12.8 build: Found no NVIDIA driver on your system"
    assert no_cuda_reason(None, False, []) == "this torch is a CPU build"


@pytest.mark.image
def test_with_a_device_node_torch_itself_is_asked_why_it_sees_no_gpu(tmp_path):
    (tmp_path / "nvidia0").touch()  # a GPU passed in, whose driver this torch cannot use (there is none)
    line = no_cuda_line(dev=tmp_path)
    assert line is not None and "\n" not in line
    if IN_IMAGE_ENV:
        assert f"torch's CUDA {image_pins()['cuda']} build" in line
    else:
        assert "this torch is a CPU build" in line


@pytest.mark.image
def test_a_service_without_a_gpu_says_so_in_one_line_and_keeps_serving(tmp_path):
    service = Service(make_home(tmp_path / "home")).start()
    try:
        log = tmp_path / "home" / "service.log"
        deadline = time.monotonic() + 120
        while "sees no CUDA GPU" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        lines = [line for line in log.read_text().splitlines() if "CUDA" in line]
        assert lines == [f"likeness: the engine sees no CUDA GPU ({NO_DEVICE}): SDXL training will offload to "
                         "Modal and the tiny model runs on the CPU; on a machine without a GPU, start the image "
                         "with compose.cpu.yaml"], log.read_text()
        # Still serving: under `restart: unless-stopped` there is nothing to restart.
        assert service.process.poll() is None
        assert service.get("/health").status_code == 200
        assert "Traceback" not in log.read_text()
    finally:
        service.stop()
