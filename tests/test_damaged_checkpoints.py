"""A damaged newest checkpoint: a resume falls back to the newest one that loads and says which it
skipped and why; checkpoint files are loaded as data (weights_only), never as code to run."""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.errors import TrainingCancelled
from engine.events import Log
from engine.training.checkpoints import DamagedCheckpoint, read_checkpoint
from engine.training.run_dir import RunDir
from engine.training.trainer import train
from tests.conftest import tiny_train_config

RUN = dict(steps=6, checkpoint_every=2, sample_every=0)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, dataset, settings, tiny_model):
    """A run cancelled at step 5, with checkpoints at steps 2 and 4 and the one the cancel kept at 5."""
    out = tmp_path_factory.mktemp("checkpoints") / "run"

    def stop_at_five(step: int) -> None:
        if step == 5:
            raise TrainingCancelled()

    with pytest.raises(TrainingCancelled):
        train(tiny_train_config(dataset, out, **RUN), settings, step_hook=stop_at_five)
    assert RunDir(out).checkpoint_steps() == [2, 4, 5]
    # The tests below damage the newest periodic checkpoint and need a resume to meet it first.
    shutil.rmtree(RunDir(out).checkpoint_path(5))
    return out


@pytest.fixture
def run_copy(tmp_path, stopped_run):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


@pytest.mark.parametrize(("file", "content", "said"), [
    ("optimizer.pt", b"garbage, not a torch file", "optimizer.pt is damaged"),
    ("rng.pt", b"", "rng.pt is damaged"),
    ("state.json", b"{not json", "state.json is damaged"),
])
def test_each_damaged_file_is_named(run_copy, file, content, said):
    newest = RunDir(run_copy).checkpoint_path(4)
    read_checkpoint(newest)  # whole, it reads
    (newest / file).write_bytes(content)
    with pytest.raises(DamagedCheckpoint, match=said):
        read_checkpoint(newest)


def test_a_checkpoint_file_never_runs_code(run_copy, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # what a crafted pickle does: call anything on load
            return (open, (str(marker), "w"))

    newest = RunDir(run_copy).checkpoint_path(4)
    rng = torch.load(newest / "rng.pt", weights_only=True)
    torch.save({**rng, "extra": Payload()}, newest / "rng.pt")
    with pytest.raises(DamagedCheckpoint, match="rng.pt is damaged"):
        read_checkpoint(newest)
    assert not marker.exists()


def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(run_copy, dataset, settings):
    (RunDir(run_copy).checkpoint_path(4) / "optimizer.pt").write_bytes(b"garbage")
    logs: list[str] = []
    train(tiny_train_config(dataset, run_copy, resume=True, **RUN), settings,
          on_event=lambda event: logs.append(event.message) if isinstance(event, Log) else None)
    assert any("skipped the checkpoint at step 4: optimizer.pt is damaged" in line for line in logs), logs
    assert "resumed from checkpoint at step 2" in logs
    assert [row["step"] for row in RunDir(run_copy).read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert RunDir(run_copy).read_run()["status"] == "done"
