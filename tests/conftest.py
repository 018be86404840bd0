"""Shared fixtures: one likeness home with the tiny model, demo photos, and a short trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the model hub: a missing model must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pytest runs two workers on two cores, and each test may start a service and a worker process:
# one torch thread per process keeps them from fighting over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("likeness-home")


@pytest.fixture(autouse=True)
def _likeness_home(home, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOME", str(home))


@pytest.fixture(scope="session")
def settings(home):
    from engine.settings import Settings

    return Settings(home=home)


@pytest.fixture(scope="session")
def tiny_model(settings) -> Path:
    from engine.models.tiny import ensure_tiny_model

    return ensure_tiny_model(settings.models_dir)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    from engine.prep.demo_photos import make_demo_photos

    folder = tmp_path_factory.mktemp("photos")
    make_demo_photos(folder, count=4)
    return folder


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, photos, home) -> Path:
    """The demo photos through prep, once: most training tests start from a prepared dataset."""
    from engine.prep import PrepConfig, prepare_photos

    os.environ["LIKENESS_HOME"] = str(home)
    out = tmp_path_factory.mktemp("datasets") / "astronaut"
    prepare_photos(PrepConfig(photos=photos, out=out, size=64, workers=1))
    return out


def tiny_train_config(data: Path, out: Path, **overrides):
    """A run small enough for a test: 64 px, a few steps, samples and checkpoints every 3 steps."""
    from engine.training.config import TrainConfig

    values = dict(data=data, out=out, base="tiny", steps=6, resolution=64, rank=4, lr=1e-3,
                  sample_every=3, sample_steps=2, checkpoint_every=3, checkpoints_keep=5, sample_seeds=(0,),
                  validation_prompts=("a photo of {token} {class_word}",))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, photos, settings, tiny_model) -> Path:
    from engine.training.trainer import train

    # From raw photos, as a user would: the trainer runs prep into RUN_DIR/dataset first.
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_train_config(photos, out), settings)
    return out


# A run with everything the interop tests and the CLI battery need: LoRA on the UNet and both text
# encoders, alpha != rank (so a scale that lived only in the metadata would show), a checkpoint.
TEXT_ENCODER_RUN = dict(steps=2, rank=4, alpha=8.0, train_text_encoder=True, sample_every=0, checkpoint_every=1)


@pytest.fixture(scope="session")
def text_encoder_run(tmp_path_factory, dataset, settings, tiny_model) -> Path:
    from engine.training.trainer import train

    out = tmp_path_factory.mktemp("runs") / "te-run"
    train(tiny_train_config(dataset, out, **TEXT_ENCODER_RUN), settings)
    return out
