"""Where a training run goes: this machine's GPU when the run fits it, else the cheapest Modal GPU that does.

Not to be confused with ``engine.models.device``, which picks the torch device and precision *inside* a run
that is already somewhere. Here: detect the local GPUs, estimate the run's peak VRAM, and decide.

    estimate_peak_vram(config, free_gib) -> MemoryEstimate  (pure: the savers that fit, each phase's peak)
    decide(config, where, gpu, local_gpus) -> Decision   (pure: the CLI's --dry-run and the TUI show it)
    detect_local_gpus()         -> [LocalGpu]       (the one impure part: asks CUDA)

The estimate is the largest of the run's phases (engine.training.memory_plan): weights and LoRA state are
counted from SDXL's parameter counts, activations are coefficients per 1024-px image checked against
measured points (``bench/calibration/sdxl_phases_measured.json``, within 15 % by the tests) and
published bounds (``bench/calibration/sdxl_lora_vram.json``). The savers (gradient checkpointing,
8-bit AdamW) are chosen per card: off where the run fits without them, which is 2.2x faster a step.
``make bench`` (``python -m bench.placement_bench``) reports the estimate against all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from engine.errors import LikenessError
from engine.placement.executor import Executor, LocalExecutor
from engine.placement.gpus import (
    H100_CLASS_SPEED,
    MODAL_GPUS,
    PRICES_AS_OF,
    GpuOffer,
    LocalGpu,
    modal_gpu,
)
from engine.training import memory_plan
from engine.training.memory_plan import MemoryPlan

if TYPE_CHECKING:
    from engine.placement.cloud.client import ModalClient
    from engine.training.config import TrainConfig

GIB = 2**30
Where = Literal["auto", "local", "modal"]


# --- The memory estimate -----------------------------------------------------------------------------
# The phases and their coefficients live in engine.training.memory_plan; here, the whole run's peak.
CUDA_CONTEXT_GIB = memory_plan.CUDA_CONTEXT_GIB
SAFETY_MARGIN = memory_plan.SAFETY_MARGIN
_PHASE_LABELS = {"caching": "caching (text encoders, VAE one image at a time)", "load": "load (UNet and LoRA)",
                 "loop": "training loop", "sampling": "sample grids (UNet, then VAE decode in tiles)"}


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a training run in GiB: the whole run, each phase, the loop's parts,
    and the savers it was estimated with."""

    family: Literal["sdxl", "tiny"]
    total_gib: float
    parts: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    plan: MemoryPlan | None = None
    on_cpu: bool = False

    @property
    def required_gib(self) -> float:
        """What the device must have free: the estimate plus the safety margin."""
        return self.total_gib * (1 + SAFETY_MARGIN)


def model_family(config: TrainConfig) -> Literal["sdxl", "tiny"]:
    # The trainer trains SDXL-architecture models only; any base but the built-in tiny one is SDXL-sized.
    return "tiny" if config.base == "tiny" else "sdxl"


def estimate_peak_vram(config: TrainConfig, free_gib: float | None = None, on_cpu: bool = False) -> MemoryEstimate:
    """Peak memory of ``config`` on a CUDA card (as nvidia-smi would show it) or, ``on_cpu``, in RAM,
    with the savers ``choose_plan`` picks for ``free_gib`` free (None: unknown, every auto saver on)."""
    plan = memory_plan.choose_plan(config, free_gib, on_cpu)
    return _estimate_with(config, plan, on_cpu)


def _estimate_with(config: TrainConfig, plan: MemoryPlan, on_cpu: bool) -> MemoryEstimate:
    phases = memory_plan.estimate_phases(config, plan, on_cpu)
    parts = {**phases.parts, ("process" if on_cpu else "CUDA context"): phases.overhead_gib}
    return MemoryEstimate(model_family(config), round(phases.peak_gib, 2), parts, dict(phases.phases), plan, on_cpu)


# --- The time estimate -------------------------------------------------------------------------------
# Rough, not measured by likeness: seconds per step of SDXL LoRA at 1024 px, batch 1, gradient
# checkpointing, on an A10G (community reports put it at 1.5-2 s), and a 25-step sample image with
# guidance. Fixed: container start, model load from the cache volume, caching latents.
_A10G_SECONDS_PER_STEP = 1.6
_A10G_SECONDS_PER_SAMPLE_IMAGE = 7.0
_FIXED_SECONDS = 180.0
_NO_CHECKPOINTING_TIME = 0.379 / 0.836
# Local cards the time estimate knows, relative to an A10G (substring of torch's device name).
_LOCAL_SPEED = {"H200": H100_CLASS_SPEED, "H100": H100_CLASS_SPEED, "A100": 2.2, "L40S": 2.0, "4090": 2.0, "A6000": 1.3, "3090": 1.2, "A10": 1.0,
                "4080": 1.5, "4070": 1.0, "3080": 1.0, "3060": 0.5, "T4": 0.3}


def estimate_seconds(config: TrainConfig, relative_speed: float, plan: MemoryPlan | None = None) -> float:
    """Wall time of ``config`` with ``plan``'s savers on a GPU ``relative_speed`` times an A10G."""
    plan = plan or memory_plan.choose_plan(config, None)
    pixels = (config.resolution / 1024) ** 2
    images = config.batch_size + (1 if config.prior_preservation else 0)
    per_step = _A10G_SECONDS_PER_STEP * pixels * images
    # Measured on an H200: a step without recomputation took 0.379 s where checkpointing every block took
    # 0.836. Between the two, in proportion to the FLOPs recomputed (not measured yet: bench/gpu_bench.py's
    # partial-checkpointing variants will).
    per_step *= _NO_CHECKPOINTING_TIME + (1.0 - _NO_CHECKPOINTING_TIME) * plan.share
    per_step *= 2.5 if config.mixed_precision == "no" else 1.0
    per_step *= 1.1 if config.train_text_encoder else 1.0
    grids = 0
    if config.sample_every:
        grids = 1 + config.steps // config.sample_every + (1 if config.steps % config.sample_every else 0)
    sampling = grids * len(config.validation_prompts) * len(config.sample_seeds) * _A10G_SECONDS_PER_SAMPLE_IMAGE
    sampling *= pixels * config.sample_steps / 25
    return _FIXED_SECONDS + (config.steps * per_step + sampling) / relative_speed


def _local_speed(name: str) -> float | None:
    for key, speed in _LOCAL_SPEED.items():
        if key.lower() in name.lower():
            return speed
    return None


# --- The decision ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """Where a run goes and what it will cost; built by ``decide``, shown by --dry-run and the TUI."""

    where: Literal["local", "modal"]
    gpu: str | None  # the Modal GPU type, or the local GPU's name; None = this machine's CPU
    estimate: MemoryEstimate
    local_gpu: LocalGpu | None  # the local GPU considered (the one asked for, or the one with most free memory)
    fits_locally: bool
    estimated_seconds: float | None  # None where the local card's speed is unknown (or the CPU)
    estimated_cost_usd: float | None  # 0.0 locally; Modal: seconds x the per-second price
    reason: str  # one line: why here
    warnings: tuple[str, ...] = ()
    prices_as_of: str = PRICES_AS_OF

    def summary(self) -> str:
        """One line for the TUI: estimate, where, GPU, time, cost, and the savers chosen."""
        where = f"{self.where} on {self.gpu}" if self.gpu else f"{self.where} on the CPU"
        time_part = f", ~{self.estimated_seconds / 60:.0f} min" if self.estimated_seconds is not None else ""
        cost = f", ${self.estimated_cost_usd:.2f}" if self.estimated_cost_usd else ""
        memory = "RAM" if self.estimate.on_cpu else "VRAM"
        plan = self.estimate.plan
        savers = f"; savers: {plan.savers()} ({plan.reason})" if plan else ""
        return f"needs ~{self.estimate.total_gib:.1f} GiB {memory} → {where}{time_part}{cost} ({self.reason}){savers}"

    def describe(self) -> str:
        """The --dry-run report, a few lines: the peak, each phase's peak, the savers and why, where."""
        memory = "RAM" if self.estimate.on_cpu else "VRAM"
        lines = [f"estimated peak {memory}: {self.estimate.total_gib:.1f} GiB "
                 f"(needs {self.estimate.required_gib:.1f} GiB free with the {SAFETY_MARGIN:.0%} margin)"]
        plan = self.estimate.plan
        for phase, gib in self.estimate.phases.items():
            label = _PHASE_LABELS[phase]
            if phase == "sampling" and plan is not None:
                images = f"{plan.sample_batch} image{'s' if plan.sample_batch > 1 else ''}"
                decode = "whole" if plan.decode_tile_px is None else f"in {plan.decode_tile_px}-px tiles"
                label = f"sample grids (UNet on {images} a pass, then VAE decode {decode})"
            lines.append(f"  {label}: {gib:.2f} GiB")
            if phase == "loop":
                lines += [f"    {name}: {part:.2f} GiB" for name, part in self.estimate.parts.items()
                          if name not in ("CUDA context", "process")]
        lines += [f"  {name}: {gib:.2f} GiB" for name, gib in self.estimate.parts.items()
                  if name in ("CUDA context", "process")]
        if plan is not None:
            lines.append(f"savers: {plan.savers()} ({plan.reason})")
            if plan.gradient_checkpointing and plan.checkpointed is not None:
                every = plan.share >= 1.0 and len(plan.checkpointed) == plan.blocks_total
                lines.append("  checkpointed blocks: " + ("every block" if every else block_list(plan.checkpointed)))
        if self.local_gpu is not None:
            lines.append(f"local GPU: {self.local_gpu.name}, {self.local_gpu.free_gib:.1f} of "
                         f"{self.local_gpu.total_gib:.1f} GiB free")
        else:
            lines.append("local GPU: none")
        lines.append(f"where: {self.where}" + (f" on {self.gpu}" if self.gpu else " on the CPU") + f" ({self.reason})")
        if self.estimated_seconds is not None:
            lines.append(f"estimated time: {self.estimated_seconds / 60:.0f} min")
        if self.where == "modal" and self.estimated_cost_usd is not None:
            lines.append(f"estimated cost: ${self.estimated_cost_usd:.2f} (Modal prices as of {self.prices_as_of})")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def block_list(names) -> str:
    """Block names, a text encoder's consecutive layers as one range: 'up_blocks.0.attentions.1, text_encoder_2.layers.0-31'."""
    out, run = [], None  # run: (prefix, first, last)
    for name in names:
        prefix, _, number = name.rpartition(".")
        if ".layers" in prefix and number.isdigit():
            if run and run[0] == prefix and run[2] + 1 == int(number):
                run = (run[0], run[1], int(number))
                continue
            if run:
                out.append(_layer_range(run))
            run = (prefix, int(number), int(number))
            continue
        if run:
            out.append(_layer_range(run))
            run = None
        out.append(name)
    if run:
        out.append(_layer_range(run))
    return ", ".join(out)


def _layer_range(run: tuple[str, int, int]) -> str:
    prefix, first, last = run
    return f"{prefix}.{first}" if first == last else f"{prefix}.{first}-{last}"


def on_modal_gpu(config: TrainConfig, offer: GpuOffer) -> tuple[MemoryEstimate, float, float]:
    """``config`` on ``offer``: the estimate with the savers that card calls for, seconds, and dollars.
    The trainer on that card chooses its savers with the same function, against what it finds free."""
    estimate = estimate_peak_vram(config, offer.vram_gib)
    seconds = estimate_seconds(config, offer.relative_speed, estimate.plan)
    return estimate, seconds, seconds * offer.usd_per_second


def choose_gpu(config: TrainConfig) -> GpuOffer:
    """The Modal GPU that fits the run with the margin at the lowest estimated cost of the whole run,
    each card judged with the savers it calls for (a big card runs without checkpointing, faster)."""
    plans = {gpu.name: on_modal_gpu(config, gpu) for gpu in MODAL_GPUS}
    fitting = [gpu for gpu in MODAL_GPUS if plans[gpu.name][0].required_gib <= gpu.vram_gib]
    if not fitting:
        biggest = max(MODAL_GPUS, key=lambda g: g.vram_gib)
        needed = plans[biggest.name][0].required_gib
        raise LikenessError(
            f"this run needs about {needed:.0f} GiB of GPU memory, more than Modal's largest "
            f"({biggest.name}, {biggest.vram_gib:.0f} GiB): turn on --gradient-checkpointing or lower --batch-size")
    return min(fitting, key=lambda g: (plans[g.name][2], g.usd_per_second))


def where_asked(where: Where, gpu: str | None, device: str) -> Where:
    """Where a run asks to go: naming a cloud GPU is asking for the cloud; clashes are one-line errors."""
    if gpu is not None:
        if where == "local":
            raise LikenessError(f"--gpu {gpu} picks a Modal GPU; it does not go with --where local")
        where = "modal"
    if where == "modal" and device == "cpu":
        raise LikenessError("--device cpu runs on this machine; it does not go with --where modal")
    return where


def decide(config: TrainConfig, where: Where = "auto", gpu: str | None = None,
           local_gpus: list[LocalGpu] | tuple[LocalGpu, ...] = (), host_free_gib: float | None = None) -> Decision:
    """Decide where ``config`` runs and with which savers. Pure: the local GPUs and the RAM free for a
    run on the CPU are passed in (``detect_local_gpus()``, ``engine.models.device.free_memory_gib``)."""
    offer = modal_gpu(gpu) if gpu is not None else None
    implied = offer is not None and where == "auto"
    where = where_asked(where, gpu, config.device)

    local = _local_gpu_for(config.device, local_gpus)
    # Judged on the local card with the savers that card calls for; on no card, with every saver.
    estimate = estimate_peak_vram(config, local.free_gib if local is not None else None)
    fits = local is not None and estimate.required_gib <= local.free_gib
    if where == "auto":
        if config.device == "cpu":
            where, reason = "local", "--device cpu"
        elif fits:
            where, reason = "local", "fits the local GPU's free memory"
        elif estimate.family == "tiny":
            where, reason = "local", "the tiny model runs anywhere"
        else:
            where = "modal"
            reason = ("no local CUDA GPU" if local is None
                      else f"needs {estimate.required_gib:.1f} GiB, the local GPU has {local.free_gib:.1f} GiB free")
    else:
        reason = f"--gpu {offer.name}" if implied else f"--where {where}"

    if where == "local":
        warnings = []
        if local is None or config.device == "cpu":
            on_cpu = estimate_peak_vram(config, host_free_gib, on_cpu=True)
            if on_cpu.family == "sdxl":
                warnings.append("SDXL on the CPU takes minutes per step; --where modal runs it on a cloud GPU")
            if host_free_gib is not None and on_cpu.required_gib > host_free_gib:
                warnings.append(f"the estimate ({on_cpu.required_gib:.1f} GiB with margin) is more than the "
                                f"{host_free_gib:.1f} GiB of RAM free: it may run out of memory")
            return Decision("local", None, on_cpu, local, fits, None, 0.0, reason, tuple(warnings))
        if not fits:
            warnings.append(f"the estimate ({estimate.required_gib:.1f} GiB with margin) is more than the "
                            f"{local.free_gib:.1f} GiB free: it may run out of memory (--continue-on-modal "
                            "carries on in the cloud from the last checkpoint)")
        speed = _local_speed(local.name)
        seconds = estimate_seconds(config, speed, estimate.plan) if speed else None
        return Decision("local", local.name, estimate, local, fits, seconds, 0.0, reason, tuple(warnings))

    warnings = []
    if offer is None:
        offer = choose_gpu(config)
        reason += f"; {offer.name} is the cheapest Modal GPU it fits"
    cloud, seconds, cost = on_modal_gpu(config, offer)
    if cloud.required_gib > offer.vram_gib:
        warnings.append(f"the estimate ({cloud.required_gib:.1f} GiB with margin) is more than the "
                        f"{offer.name}'s {offer.vram_gib:.0f} GiB: it may run out of memory")
    return Decision("modal", offer.name, cloud, local, fits, seconds, cost, reason, tuple(warnings))


def _local_gpu_for(device: str, gpus: list[LocalGpu] | tuple[LocalGpu, ...]) -> LocalGpu | None:
    if not gpus or device == "cpu":
        return None
    if device.startswith("cuda:"):
        index = int(device.removeprefix("cuda:"))
        return next((g for g in gpus if g.index == index), None)
    return max(gpus, key=lambda g: g.free_gib)


def plan_continue_on_modal(config: TrainConfig, checkpoint_step: int | None,
                           gpu: str | None = None) -> tuple[TrainConfig, Decision]:
    """After a local OOM: the config that carries on in the cloud (from the checkpoint, if any) and where."""
    resume = checkpoint_step is not None
    cloud_config = for_the_cloud(config.model_copy(update={"resume": resume, "force": not resume}))
    return cloud_config, decide(cloud_config, "modal", gpu)


def for_the_cloud(config: TrainConfig) -> TrainConfig:
    """``config`` for an attempt on a cloud GPU: a run pinned to this machine's CPU (that ran out of
    RAM) takes the cloud's CUDA device instead; everything else is unchanged."""
    return config.model_copy(update={"device": "auto"}) if config.device == "cpu" else config


def choose_executor(decision: Decision, client: ModalClient | None = None) -> Executor:
    """The executor for ``decision``; ``client`` replaces the real Modal connection (tests pass an in-process one)."""
    if decision.where == "local":
        return LocalExecutor()
    # Modal's client loads only for a run that goes there.
    from engine.placement.cloud.executor import ModalExecutor

    return ModalExecutor(gpu=decision.gpu, client=client)
