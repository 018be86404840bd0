"""Why a run stopped before its end, in the words run.json and the user see."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import LikenessError, TrainingCancelled

if TYPE_CHECKING:
    from pathlib import Path

    from engine.training.config import TrainConfig


class OutOfGpuMemory(LikenessError):
    """A local run hit CUDA out-of-memory; run.json says so and the newest checkpoint is kept."""

    def __init__(self, message: str, run_dir: Path, checkpoint_step: int | None):
        super().__init__(message)
        self.run_dir = run_dir
        self.checkpoint_step = checkpoint_step


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error, and for its CPU allocator's (a run on the CPU
    that outgrows RAM); by name and message, so torch need not be imported here."""
    message = str(error)
    return (type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in message
            or "DefaultCPUAllocator: can't allocate memory" in message)


def stop_status(error: BaseException) -> str:
    """The run.json status of a run that stopped with ``error`` before its end."""
    if isinstance(error, TrainingCancelled):
        return "cancelled"
    if is_out_of_memory(error):
        return "out_of_memory"
    return "interrupted"


def out_of_memory_error(config: TrainConfig, gpu_name: str | None, checkpoint_step: int | None) -> OutOfGpuMemory:
    """The one-line error for a local OOM, with the command that continues on Modal."""
    where = f" on {gpu_name}" if gpu_name else ""
    carry_on = "--resume" if checkpoint_step is not None else "--force"
    kept = (f"the checkpoint at step {checkpoint_step} is kept" if checkpoint_step is not None
            else "no checkpoint was written yet")
    return OutOfGpuMemory(
        f"ran out of {'GPU ' if gpu_name else ''}memory{where} ({kept}); continue on a cloud GPU with "
        f"`likeness train --data {config.data} --out {config.out} {carry_on} --where modal`, "
        "or pass --continue-on-modal next time",
        config.out, checkpoint_step)
