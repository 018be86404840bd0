"""The GPUs a run can go to: the ones Modal rents (with their prices) and the ones on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from engine.errors import LikenessError

GIB = 2**30


# --- Modal's GPUs and prices -------------------------------------------------------------------------
# Modal bills per second of a running container. GPU prices from modal.com/pricing as listed on
# PRICES_AS_OF (H100 $3.9492/h, A100-80GB $2.4984/h, L40S $1.9512/h, A100-40GB $2.0988/h, A10G $1.1016/h);
# the container's CPU and memory add a few percent, not counted. Update the date with the numbers.
PRICES_AS_OF = "2026-05-07"


@dataclass(frozen=True)
class GpuOffer:
    """One GPU type Modal rents."""

    name: str  # Modal's gpu= string
    vram_gib: float  # what CUDA reports as total memory on that card
    usd_per_second: float
    relative_speed: float  # SDXL LoRA steps per second relative to an A10G; rough, see _A10G_SECONDS_PER_STEP


# Measured (issue 11): an H200 took 0.836 s a step with checkpointing at batch 1, launch- and overhead-
# bound (6 % of its bf16 peak), against the 1.6 s assumed for an A10G; an H100 is taken as the same.
# The other cards' speeds are rough.
H100_CLASS_SPEED = 1.6 / 0.836
MODAL_GPUS: tuple[GpuOffer, ...] = (
    GpuOffer("A10G", 22.5, 0.000306, 1.0),
    GpuOffer("L40S", 45.0, 0.000542, 2.0),
    GpuOffer("A100-40GB", 40.0, 0.000583, 2.2),
    GpuOffer("A100-80GB", 80.0, 0.000694, 2.3),
    GpuOffer("H100", 79.6, 0.001097, H100_CLASS_SPEED),
)
GPU_NAMES = tuple(gpu.name for gpu in MODAL_GPUS)
GpuName = Literal["A10G", "L40S", "A100-40GB", "A100-80GB", "H100"]
assert GPU_NAMES == get_args(GpuName), "GpuName must list MODAL_GPUS"


def modal_gpu(name: str) -> GpuOffer:
    for gpu in MODAL_GPUS:
        if gpu.name.lower() == name.lower():
            return gpu
    raise LikenessError(f"--gpu {name}: unknown Modal GPU; choose one of {', '.join(GPU_NAMES)}")


# --- Local GPUs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalGpu:
    """A CUDA GPU on this machine, with the memory free when asked."""

    index: int
    name: str
    total_gib: float
    free_gib: float


def detect_local_gpus() -> list[LocalGpu]:
    """This machine's CUDA GPUs; empty without torch's CUDA build or a GPU."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(LocalGpu(index, torch.cuda.get_device_name(index), total / GIB, free / GIB))
    return gpus
