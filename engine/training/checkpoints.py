"""Resumable training state: LoRA weights, optimizer, LR schedule, RNG states and the step.

A checkpoint is written into a temporary folder and renamed into place, and only a folder with
``state.json`` counts, so a crash mid-save never leaves a checkpoint that looks whole.

A checkpoint can still be damaged later (a disk error, a sync tool, a hand edit): a resume reads
every file of the newest one before anything is restored, and falls back to the newest checkpoint
that reads, saying which it skipped and why. Files are read with ``torch.load(weights_only=True)``,
which unpickles tensors and plain values only: a checkpoint folder is data, never code to run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from engine.errors import LikenessError
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
    # NumPy's state as a tensor and plain values, not an ndarray: weights_only loading takes no NumPy objects.
    name, keys, position, has_gauss, cached = np.random.get_state()
    rng = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position,
                                                  has_gauss, cached), "torch": torch.get_rng_state()}
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


class DamagedCheckpoint(LikenessError):
    """A checkpoint with a file missing or unreadable; the message names the file and why, in one line."""


def checkpoint_state(path: Path) -> dict:
    """A checkpoint's state.json: its step, the config, and the savers it was trained with."""
    try:
        state = json.loads((path / "state.json").read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not UTF-8 or not JSON
        raise DamagedCheckpoint(f"state.json is damaged ({_short(error)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpoint("state.json has no step")
    if not isinstance(state.get("memory_plan", {}), dict):
        raise DamagedCheckpoint("state.json's memory_plan is not an object")
    return state


def read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read and checked, before anything is restored from it; DamagedCheckpoint if not."""
    state = checkpoint_state(path)
    files = {name: _load(path / name) for name in ("optimizer.pt", "scheduler.pt", "rng.pt")}
    rng = files["rng.pt"]
    if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
        raise DamagedCheckpoint("rng.pt does not hold the random states")
    for name in ("optimizer.pt", "scheduler.pt"):
        if not isinstance(files[name], dict):
            raise DamagedCheckpoint(f"{name} does not hold a state")
    weights = path / TRAINING_STATE_FILENAME
    if not weights.is_file() and not (path / LORA_FILENAME).is_file():
        raise DamagedCheckpoint(f"it has neither {TRAINING_STATE_FILENAME} nor {LORA_FILENAME}")
    return {"step": state["step"], "state": state, **files}


def _load(file: Path):
    import pickle

    import torch

    if not file.is_file():
        raise DamagedCheckpoint(f"{file.name} is missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "numpy" in str(error):  # a checkpoint from before the NumPy state was saved as a tensor
            return _load_with_numpy_state(file)
        raise DamagedCheckpoint(f"{file.name} is damaged ({_short(error)})") from None
    except Exception as error:  # noqa: BLE001 - torch raises anything from RuntimeError to EOFError on junk
        raise DamagedCheckpoint(f"{file.name} is damaged ({_short(error)})") from None


def _load_with_numpy_state(file: Path):
    """Older rng.pt files hold NumPy's state as an ndarray: allow exactly the NumPy types that takes."""
    import numpy as np
    import torch

    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np.core.multiarray._reconstruct]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise DamagedCheckpoint(f"{file.name} is damaged ({_short(error)})") from None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def newest_loadable(run: RunDir, on_skip, below: int | None = None) -> tuple[int, dict]:
    """The newest checkpoint of `run` (before step `below`) whose files all read, as (step, its files);
    each newer one that does not is passed to ``on_skip`` as a line saying which and why. LikenessError
    when none reads."""
    skipped = []
    for step in reversed([s for s in run.checkpoint_steps() if below is None or s < below]):
        try:
            return step, read_checkpoint(run.checkpoint_path(step))
        except DamagedCheckpoint as error:
            line = f"skipped the checkpoint at step {step}: {error}"
            skipped.append(line)
            on_skip(line)
    if not skipped:
        raise LikenessError(f"--resume: {run.root} has no checkpoint to resume from")
    raise LikenessError(f"--resume: no checkpoint in {run.root} can be read ({'; '.join(skipped)})")


def load_checkpoint(path: Path, models: dict, optimizer, lr_scheduler, files: dict | None = None) -> int:
    """Restore training state from ``path`` (its files already read by :func:`read_checkpoint`, or read
    now); return the step it was saved at."""
    import numpy as np
    import torch

    files = files or read_checkpoint(path)
    try:
        if (path / TRAINING_STATE_FILENAME).is_file():
            load_training_state(path / TRAINING_STATE_FILENAME, models)
        else:  # a checkpoint from before likeness kept the training state
            load_lora_into_training_models(path / LORA_FILENAME, models["unet"], models.get("text_encoder"),
                                           models.get("text_encoder_2"))
        optimizer.load_state_dict(files["optimizer.pt"])
        lr_scheduler.load_state_dict(files["scheduler.pt"])
        rng = files["rng.pt"]
        name, keys, *rest = rng["numpy"]
        numpy_state = (name, keys.numpy().astype(np.uint32) if isinstance(keys, torch.Tensor) else keys, *rest)
        random.setstate(_as_python_state(rng["python"]))
        np.random.set_state(numpy_state)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except DamagedCheckpoint:
        raise
    except LikenessError as error:
        raise DamagedCheckpoint(str(error)) from None
    except Exception as error:  # noqa: BLE001 - a state that read but does not fit this run
        raise DamagedCheckpoint(f"its state does not fit this run ({_short(error)})") from None
    return files["step"]


def _as_python_state(state):
    # random.setstate wants (version, tuple of ints, gauss); weights_only loading may give lists back.
    version, internal, gauss = state
    return version, tuple(internal), gauss
