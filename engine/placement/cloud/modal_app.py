"""Modal's App, Image and Volumes for likeness, all here; the functions are thin wrappers over engine.placement.cloud.remote.

Building these objects needs no network: Modal resolves them when an app runs. ``ModalCloud``
(engine.placement.cloud.client) runs this App ephemerally for each job, so the container always has the code of
this checkout; the Image's dependency layers are cached by Modal and rebuilt only when they change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import modal

from engine.placement.cloud.remote import CONTAINER_ROOT

APP_NAME = "likeness"


def _build_file(relative: str) -> Path:
    """A file the Modal image is built from: the checkout's, or the copy the Docker image keeps.

    In a checkout the files sit at the repository root, three folders above this one. The Docker
    image installs likeness as a package (no source tree), so its Dockerfile copies the same two
    files under the virtual environment's ``share/likeness``; offloading from the container needs them.
    """
    checkout = Path(__file__).resolve().parents[3] / relative
    if checkout.is_file():
        return checkout
    return Path(sys.prefix) / "share" / "likeness" / relative


# The Docker image's GPU stack, from the one file that pins it: torch's CUDA 12.8 build from PyPI,
# and the xformers and bitsandbytes built for it.
IMAGE_PINS = _build_file("docker/image-pins.txt")
PYPROJECT = _build_file("pyproject.toml")

# Generous: 500 SDXL steps take ~25 min on an A10G; a retry resumes from the last checkpoint.
TRAIN_TIMEOUT_S = 6 * 3600
GENERATE_TIMEOUT_S = 2 * 3600
RETRIES = modal.Retries(max_retries=2, initial_delay=10.0, backoff_coefficient=2.0)
DEFAULT_GPU = "A10G"  # what the decorator says; each call names the placement's GPU with with_options

app = modal.App(APP_NAME)

image = (
    modal.Image.debian_slim(python_version="3.11")
    # The pinned GPU stack first, as docker/install.sh does, so nothing later pulls another torch in.
    .pip_install_from_requirements(str(IMAGE_PINS))
    # The project's own dependency list (read locally when the image is built): no second list to drift.
    .pip_install_from_pyproject(str(PYPROJECT))
    # face_recognition asks for `dlib`, which would compile for many minutes; dlib-bin (above) provides it.
    .pip_install("face-recognition==1.3.0", extra_options="--no-deps")
    .env({"HF_HOME": f"{CONTAINER_ROOT}/cache/huggingface", "LIKENESS_HOME": f"{CONTAINER_ROOT}/cache/likeness"})
    # Last, so a code change re-uploads the code and rebuilds nothing.
    .add_local_python_source("engine")
)

datasets_volume = modal.Volume.from_name("likeness-datasets", create_if_missing=True)
runs_volume = modal.Volume.from_name("likeness-runs", create_if_missing=True)
cache_volume = modal.Volume.from_name("likeness-cache", create_if_missing=True)
VOLUMES = {f"{CONTAINER_ROOT}/datasets": datasets_volume, f"{CONTAINER_ROOT}/runs": runs_volume,
           f"{CONTAINER_ROOT}/cache": cache_volume}


def _commit_runs() -> None:
    # In a container, make the run folder visible to the client and to a retry now; in process
    # (``.local()``), the folder is already the client's.
    if not modal.is_local():
        runs_volume.commit()


@app.function(image=image, gpu=DEFAULT_GPU, volumes=VOLUMES, timeout=TRAIN_TIMEOUT_S, retries=RETRIES)
def train(request: dict, events, control) -> dict:
    """Train one LoRA (engine.training.trainer.train) into the runs volume; ``events`` streams progress back."""
    from engine.placement.cloud.remote import RemoteTrainRequest, run_training

    result = run_training(RemoteTrainRequest(**request), events, control, _commit_runs)
    if not modal.is_local():
        cache_volume.commit()  # the base model, downloaded once, for every later run
    return result


@app.function(image=image, gpu=DEFAULT_GPU, volumes=VOLUMES, timeout=GENERATE_TIMEOUT_S, retries=RETRIES)
def generate(request: dict) -> dict:
    """Generate with a run's LoRA (engine.generation.generator.generate); the images land in the run's folder."""
    from engine.placement.cloud.remote import run_generation

    result = run_generation(request)
    _commit_runs()
    return result
