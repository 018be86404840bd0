"""Which device and precision a run uses, and honest memory figures for it."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Protocol

from engine.errors import LikenessError


@dataclass(frozen=True)
class Placement:
    """Where the tensors live and in which precision the frozen weights are kept."""

    device: str
    weight_dtype: str  # "float32", "float16" or "bfloat16"
    gpu_name: str | None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def choose_placement(device: str, mixed_precision: str) -> Placement:
    """Resolve 'auto' choices against the hardware that is really here."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LikenessError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LikenessError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    gpu_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    if not device.startswith("cuda"):
        # Half precision on the CPU is slower than fp32 and numerically worse: keep fp32.
        if mixed_precision in ("fp16", "bf16"):
            raise LikenessError(f"--mixed-precision {mixed_precision} needs a CUDA GPU; use 'no' or 'auto' on the CPU")
        return Placement(device, "float32", None)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[mixed_precision]
    return Placement(device, dtype, gpu_name)


def reset_peak_memory(placement: Placement) -> None:
    if placement.is_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(placement.device)


def peak_memory_mb(placement: Placement) -> float:
    """CUDA: peak bytes allocated by torch. CPU: the process's peak resident set size."""
    if placement.is_cuda:
        import torch

        return torch.cuda.max_memory_allocated(placement.device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def memory_kind(placement: Placement) -> str:
    return "cuda_max_allocated" if placement.is_cuda else "process_peak_rss"


def free_memory_gib(placement: Placement) -> float | None:
    """Memory free on ``placement``'s device now: the card's free memory, or the RAM available on the
    CPU; None where it cannot be asked. The savers are chosen against this (engine.training.memory_plan)."""
    if placement.is_cuda:
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(placement.device))
        return free / 2**30
    try:
        import psutil  # accelerate's dependency, so always here with diffusers
    except ImportError:
        return None
    return psutil.virtual_memory().available / 2**30


class MemoryMeter(Protocol):
    """Where a phase's peak comes from: CUDA's allocator, or engine.training.full_size_sim's count."""

    def reset_peak(self) -> None:
        """Start a new peak from what is allocated now."""

    def peak_mb(self) -> float:
        """The most allocated since the last reset, in MB."""


class CudaMeter:
    """torch.cuda's own peak allocation on ``placement``'s card."""

    def __init__(self, placement: Placement):
        self.placement = placement

    def reset_peak(self) -> None:
        reset_peak_memory(self.placement)

    def peak_mb(self) -> float:
        return peak_memory_mb(self.placement)


class PhasePeaks:
    """Each phase's peak memory in MB: CUDA's peak allocation, reset at every phase boundary.

    On the CPU the only figure is the process's peak resident size, which never goes down, so it
    says nothing about one phase: phases are not recorded there. ``meter``: where the peaks come from
    (the simulator counts a card that is not there).
    """

    def __init__(self, placement: Placement, meter: MemoryMeter | None = None):
        self.placement = placement
        self.meter = meter if meter is not None else CudaMeter(placement)
        self.peaks_mb: dict[str, float] = {}
        self.current: str | None = None

    def enter(self, phase: str) -> None:
        self.close()
        self.current = phase
        if self.placement.is_cuda:
            self.meter.reset_peak()

    def close(self) -> None:
        if self.current is not None and self.placement.is_cuda:
            peak = round(self.meter.peak_mb(), 1)
            self.peaks_mb[self.current] = max(self.peaks_mb.get(self.current, 0.0), peak)
        self.current = None

    def peak_mb(self) -> float:
        """The peak so far: this phase's on CUDA, the process's on the CPU."""
        return self.meter.peak_mb() if self.placement.is_cuda else peak_memory_mb(self.placement)

    def whole_run_mb(self) -> float:
        """The run's peak: the largest phase on CUDA, the process's peak on the CPU."""
        self.close()
        return max(self.peaks_mb.values()) if self.peaks_mb else peak_memory_mb(self.placement)
