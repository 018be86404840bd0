"""Resumable training state: LoRA weights, optimizer, LR schedule, RNG states and the step.

A checkpoint is written into a temporary folder and renamed into place, and only a folder with
``state.json`` counts, so a crash mid-save never leaves a checkpoint that looks whole.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from engine.models.lora_files import (
    LORA_FILENAME,
    TRAINING_STATE_FILENAME,
    LoraInfo,
    load_lora_into_training_models,
    load_training_state,
    save_lora,
    save_training_state,
)
from engine.training.run_dir import RunDir


def checkpoints_to_delete(steps: list[int], keep: int, sample_every: int) -> list[int]:
    """The checkpoints_keep rule: the newest ``keep`` stay for resuming, and every sample step's
    stays too, so the recommended step (and any other a grid showed) can be generated from.

    A checkpoint is LoRA-sized (the LoRA, its optimizer state and a few RNG states), so keeping
    one per sample grid costs little next to the base model.
    """
    older = sorted(steps)[:-keep] if keep > 0 else sorted(steps)
    return [s for s in older if not (sample_every and s % sample_every == 0)]


def save_checkpoint(run: RunDir, step: int, models: dict, optimizer, lr_scheduler, config_json: dict, *,
                    rank: int, alpha: float, keep: int, memory_plan: dict | None = None,
                    sample_every: int = 0, info: LoraInfo | None = None) -> Path:
    """Write the resumable state of ``step``; its LoRA (in kohya's layout, named ``info.name``) is
    one a user can pick to generate with or copy into another tool."""
    import numpy as np
    import torch

    target = run.checkpoint_path(step)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_lora(staging, models["unet"], models.get("text_encoder"), models.get("text_encoder_2"), rank=rank, alpha=alpha,
              info=info or LoraInfo(name=f"{run.root.name}-step{step}"))
    save_training_state(staging, models)
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), staging / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, staging / "rng.pt")
    # The savers chosen travel with the state: a resumed run must load the optimizer state into the same optimizer.
    state = {"step": step, "config": config_json, **({"memory_plan": memory_plan} if memory_plan else {})}
    (staging / "state.json").write_text(json.dumps(state, indent=2, default=str))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    for old in checkpoints_to_delete(run.checkpoint_steps(), keep, sample_every):
        shutil.rmtree(run.checkpoint_path(old), ignore_errors=True)
    return target


def checkpoint_state(path: Path) -> dict:
    """A checkpoint's state.json: its step, the config, and the savers it was trained with."""
    return json.loads((path / "state.json").read_text())


def load_checkpoint(path: Path, models: dict, optimizer, lr_scheduler) -> int:
    """Restore training state from ``path``; return the step it was saved at."""
    import numpy as np
    import torch

    if (path / TRAINING_STATE_FILENAME).is_file():
        load_training_state(path / TRAINING_STATE_FILENAME, models)
    else:  # a checkpoint from before likeness kept the training state
        load_lora_into_training_models(path / LORA_FILENAME, models["unet"], models.get("text_encoder"),
                                       models.get("text_encoder_2"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(json.loads((path / "state.json").read_text())["step"])
