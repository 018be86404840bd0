"""Disk space under LIKENESS_HOME: what a run's files need, what is free, and a full disk told apart.

A training run writes its checkpoints (LoRA, optimizer state, RNG) every `checkpoint_every`
steps, keeps `checkpoints_keep` of them and writes one more before it drops the oldest; a full
disk half-way through leaves a `.partial` folder and a job that failed for a reason nobody can
read. So the room is checked before a run, and a full disk is named as such when it happens.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from engine.placement.decision import model_family
from engine.training.config import TrainConfig
from engine.training.memory_plan import SDXL_TEXT_ENCODER_LORA_PER_RANK, SDXL_UNET_LORA_PER_RANK
from engine.training.run_dir import RunDir

MB = 2**20
# LoRA parameters per rank of the built-in tiny model (measured: its rank-4 LoRA is 224 KB in fp32).
TINY_LORA_PER_RANK = 14_000
# Errors that mean "no room": a full disk, a full quota, a file-size limit (ulimit -f).
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_mb(home: Path) -> float:
    """Megabytes free on the file system that holds LIKENESS_HOME."""
    try:
        return shutil.disk_usage(home).free / MB
    except OSError:
        return 0.0


def run_needs_mb(config: TrainConfig) -> float:
    """What a run writes at its peak: the checkpoints it keeps plus the one being written, the final
    LoRA, and its sample grids (a few MB each at 1024 px)."""
    tiny = model_family(config) == "tiny"
    per_rank = TINY_LORA_PER_RANK if tiny else (
        SDXL_UNET_LORA_PER_RANK + (SDXL_TEXT_ENCODER_LORA_PER_RANK if config.train_text_encoder else 0))
    params = config.rank * per_rank
    # fp32 weights; AdamW keeps two fp32 moments per weight, the 8-bit one two bytes (where it runs:
    # the tiny model's CPU runs fall back to full AdamW, measured at 8 bytes a weight).
    optimizer = 2 if config.optimizer == "adamw8bit" and not tiny else 8
    checkpoint = params * (4 + optimizer)
    checkpoints = (config.checkpoints_keep + 1) * checkpoint if config.checkpoint_every else 0
    grids = (config.steps // config.sample_every + 2) if config.sample_every else 0
    grid = len(config.validation_prompts) * len(config.sample_seeds) * 3 * config.resolution**2 / 2
    return (checkpoints + params * 4 + grids * grid) / MB


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or anything that led to it, says the disk (or SQLite's file) had no room."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_reason(home: Path) -> str:
    return f"disk full ({free_mb(home):.0f} MB free under LIKENESS_HOME)"


def room_problem(config: TrainConfig, home: Path, reserve_mb: float) -> str | None:
    """Why this run would not fit on the disk now (one line), or None when it fits."""
    needs, free = run_needs_mb(config), free_mb(home)
    if free - needs >= reserve_mb:
        return None
    keep = f", keeping {reserve_mb:.0f} MB free" if reserve_mb else ""
    return (f"disk full ({free:.0f} MB free under LIKENESS_HOME; this run's checkpoints and grids need "
            f"about {needs:.0f} MB{keep}): free some space, or lower checkpoints_keep")


def remove_partials(run_dir: Path) -> list[Path]:
    """Delete what a write cut short left in a run directory (half-written checkpoints, run.json, metrics)."""
    run = RunDir(run_dir)
    found = [*run.checkpoints.glob(".step-*.partial"), *run.root.glob(".*.partial"), *run.root.glob("*.partial")]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found
