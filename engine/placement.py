"""Where a training run goes: this machine's GPU when the run fits it, else the cheapest Modal GPU that does.

Not to be confused with ``engine.device``, which picks the torch device and precision *inside* a run
that is already somewhere. Here: detect the local GPUs, estimate the run's peak VRAM, and decide.

    estimate_peak_vram(config)  -> MemoryEstimate   (pure: bytes of weights, LoRA state, activations)
    decide(config, where, gpu, local_gpus) -> Decision   (pure: the CLI's --dry-run and the TUI show it)
    detect_local_gpus()         -> [LocalGpu]       (the one impure part: asks CUDA)

The estimate is a sum of parts. The weights and the LoRA's optimizer state are counted exactly from
SDXL's parameter counts; what is not countable (activations, the VAE's decode when sampling) is a
coefficient per 1024-px image, set against the reference figures in
``bench/calibration/sdxl_lora_vram.json``. ``make bench`` (``python -m bench.placement_bench``) reports
the estimate's error against those figures and against any SDXL-size measurement of our own in
``bench/results/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from engine.errors import LikenessError

if TYPE_CHECKING:
    from pathlib import Path

    from engine.train_config import TrainConfig

GIB = 2**30
Where = Literal["auto", "local", "modal"]


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


MODAL_GPUS: tuple[GpuOffer, ...] = (
    GpuOffer("A10G", 22.5, 0.000306, 1.0),
    GpuOffer("L40S", 45.0, 0.000542, 2.0),
    GpuOffer("A100-40GB", 40.0, 0.000583, 2.2),
    GpuOffer("A100-80GB", 80.0, 0.000694, 2.3),
    GpuOffer("H100", 79.6, 0.001097, 3.5),
)
GPU_NAMES = tuple(gpu.name for gpu in MODAL_GPUS)
GpuName = Literal["A10G", "L40S", "A100-40GB", "A100-80GB", "H100"]
assert GPU_NAMES == get_args(GpuName), "GpuName must list MODAL_GPUS"


def modal_gpu(name: str) -> GpuOffer:
    for gpu in MODAL_GPUS:
        if gpu.name.lower() == name.lower():
            return gpu
    raise LikenessError(f"--gpu {name}: unknown Modal GPU; choose one of {', '.join(GPU_NAMES)}")


# --- The memory estimate -----------------------------------------------------------------------------
# Parameter counts of SDXL base 1.0, counted by instantiating its configs on torch's meta device.
SDXL_UNET_PARAMS = 2_567_463_684
SDXL_TEXT_ENCODER_PARAMS = 123_060_480 + 694_659_840  # CLIP ViT-L + OpenCLIP ViT-bigG
SDXL_VAE_PARAMS = 83_653_863
# LoRA parameters per unit of rank on the attention projections (engine.lora_files' target modules).
SDXL_UNET_LORA_PER_RANK = 1_451_520
SDXL_TEXT_ENCODER_LORA_PER_RANK = 73_728 + 327_680

# Not countable; calibrated (bench/calibration/sdxl_lora_vram.json). GiB per 1024x1024 image in half
# precision with memory-efficient attention (xformers or PyTorch SDPA; both avoid the N^2 attention
# matrix, so the choice between them does not move the estimate).
ACTIVATIONS_CHECKPOINTED_GIB = 2.5  # only block inputs kept; one block recomputed at a time
ACTIVATIONS_FULL_GIB = 12.0  # every activation kept for backward
TEXT_ENCODER_ACTIVATIONS_GIB = 0.3  # per prompt, when the text encoders train (77 tokens: small)
VAE_DECODE_GIB = 3.0  # the fp32 VAE decoding a 1024-px sample image, the peak while drawing a grid
# What nvidia-smi shows beyond torch's allocations: the CUDA context and kernels. Counted because the
# decision compares against the card's free memory, which the context also takes.
CUDA_CONTEXT_GIB = 0.6
# The decision asks for this much more than the estimate, for allocator fragmentation and estimate error.
SAFETY_MARGIN = 0.10

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak GPU memory of a training run, in GiB, with the parts it is made of."""

    family: Literal["sdxl", "tiny"]
    total_gib: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def required_gib(self) -> float:
        """What the card must have free: the estimate plus the safety margin."""
        return self.total_gib * (1 + SAFETY_MARGIN)


def model_family(config: TrainConfig) -> Literal["sdxl", "tiny"]:
    # The trainer trains SDXL-architecture models only; any base but the built-in tiny one is SDXL-sized.
    return "tiny" if config.base == "tiny" else "sdxl"


def estimate_peak_vram(config: TrainConfig) -> MemoryEstimate:
    """Peak GPU memory of ``config`` on a CUDA card, as nvidia-smi would show it."""
    if model_family(config) == "tiny":
        return MemoryEstimate("tiny", 0.25 + CUDA_CONTEXT_GIB, {"tiny model": 0.25, "CUDA context": CUDA_CONTEXT_GIB})
    # 1. Precision: auto is bf16 or fp16 on every card this decides between; "no" keeps fp32.
    weight_bytes = 4 if config.mixed_precision == "no" else 2
    activation_scale = 2.0 if config.mixed_precision == "no" else 1.0
    pixels = (config.resolution / 1024) ** 2
    # 2. Frozen weights on the GPU during the loop. The trainer moves the text encoders off the GPU
    # when their outputs are cached (not training them), and the VAE when the latents are cached.
    parts = {"UNet weights": SDXL_UNET_PARAMS * weight_bytes / GIB}
    if config.train_text_encoder:
        parts["text encoder weights"] = SDXL_TEXT_ENCODER_PARAMS * weight_bytes / GIB
    if not config.cache_latents:
        parts["VAE weights"] = SDXL_VAE_PARAMS * 4 / GIB  # the VAE stays fp32
    # 3. The LoRA: fp32 weights and gradients, plus AdamW's two moments (8-bit: a quarter of the bytes).
    lora_params = config.rank * (SDXL_UNET_LORA_PER_RANK
                                 + (SDXL_TEXT_ENCODER_LORA_PER_RANK if config.train_text_encoder else 0))
    optimizer_bytes = 2 if config.optimizer == "adamw8bit" else 8
    parts["LoRA weights, gradients, optimizer"] = lora_params * (4 + 4 + optimizer_bytes) / GIB
    # 4. Activations scale with the pixels in the batch; prior preservation adds one class image per step.
    images = config.batch_size + (1 if config.prior_preservation else 0)
    per_image = ACTIVATIONS_CHECKPOINTED_GIB if config.gradient_checkpointing else ACTIVATIONS_FULL_GIB
    parts["activations"] = per_image * images * pixels * activation_scale
    if config.train_text_encoder:
        prompts = 2 if config.prior_preservation else 1
        parts["text encoder activations"] = TEXT_ENCODER_ACTIVATIONS_GIB * prompts * activation_scale
    parts["CUDA context"] = CUDA_CONTEXT_GIB
    training = sum(parts.values())
    # 5. Drawing a sample grid: no activations for backward, but the fp32 VAE decodes a full-size image.
    if config.sample_every:
        sampling = (training - parts["activations"] - parts.get("text encoder activations", 0.0)
                    + (0.0 if "VAE weights" in parts else SDXL_VAE_PARAMS * 4 / GIB) + VAE_DECODE_GIB * pixels)
        if sampling > training:
            parts["sample grid (VAE decode) beyond training"] = sampling - training
    return MemoryEstimate("sdxl", round(sum(parts.values()), 2), {k: round(v, 2) for k, v in parts.items()})


# --- The time estimate -------------------------------------------------------------------------------
# Rough, not measured by likeness: seconds per step of SDXL LoRA at 1024 px, batch 1, gradient
# checkpointing, on an A10G (community reports put it at 1.5-2 s), and a 25-step sample image with
# guidance. Fixed: container start, model load from the cache volume, caching latents.
_A10G_SECONDS_PER_STEP = 1.6
_A10G_SECONDS_PER_SAMPLE_IMAGE = 7.0
_FIXED_SECONDS = 180.0
# Local cards the time estimate knows, relative to an A10G (substring of torch's device name).
_LOCAL_SPEED = {"H100": 3.5, "A100": 2.2, "L40S": 2.0, "4090": 2.0, "A6000": 1.3, "3090": 1.2, "A10": 1.0,
                "4080": 1.5, "4070": 1.0, "3080": 1.0, "3060": 0.5, "T4": 0.3}


def estimate_seconds(config: TrainConfig, relative_speed: float) -> float:
    """Wall time of ``config`` on a GPU ``relative_speed`` times an A10G."""
    pixels = (config.resolution / 1024) ** 2
    images = config.batch_size + (1 if config.prior_preservation else 0)
    per_step = _A10G_SECONDS_PER_STEP * pixels * images
    per_step *= 1.0 if config.gradient_checkpointing else 0.75  # no recomputation in backward
    per_step *= 2.5 if config.mixed_precision == "no" else 1.0
    per_step *= 1.1 if config.train_text_encoder else 1.0
    grids = 0
    if config.sample_every:
        grids = 1 + config.steps // config.sample_every + (1 if config.steps % config.sample_every else 0)
    sampling = grids * len(config.validation_prompts) * len(config.sample_seeds) * _A10G_SECONDS_PER_SAMPLE_IMAGE
    sampling *= pixels * config.sample_steps / 25
    return _FIXED_SECONDS + (config.steps * per_step + sampling) / relative_speed


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
        """One line for the TUI: estimate, where, GPU, time and cost."""
        where = f"{self.where} on {self.gpu}" if self.gpu else f"{self.where} on the CPU"
        time_part = f", ~{self.estimated_seconds / 60:.0f} min" if self.estimated_seconds is not None else ""
        cost = f", ${self.estimated_cost_usd:.2f}" if self.estimated_cost_usd else ""
        return f"needs ~{self.estimate.total_gib:.1f} GiB VRAM → {where}{time_part}{cost} ({self.reason})"

    def describe(self) -> str:
        """The --dry-run report, a few lines."""
        lines = [f"estimated peak VRAM: {self.estimate.total_gib:.1f} GiB "
                 f"(needs {self.estimate.required_gib:.1f} GiB free with the {SAFETY_MARGIN:.0%} margin)"]
        lines += [f"  {name}: {gib:.2f} GiB" for name, gib in self.estimate.parts.items()]
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


def _modal_plan(config: TrainConfig, offer: GpuOffer) -> tuple[float, float]:
    seconds = estimate_seconds(config, offer.relative_speed)
    return seconds, seconds * offer.usd_per_second


def choose_gpu(config: TrainConfig, estimate: MemoryEstimate | None = None) -> GpuOffer:
    """The Modal GPU that fits the run with the margin at the lowest estimated cost of the whole run."""
    estimate = estimate or estimate_peak_vram(config)
    fitting = [gpu for gpu in MODAL_GPUS if estimate.required_gib <= gpu.vram_gib]
    if not fitting:
        biggest = max(MODAL_GPUS, key=lambda g: g.vram_gib)
        raise LikenessError(
            f"this run needs about {estimate.required_gib:.0f} GiB of GPU memory, more than Modal's largest "
            f"({biggest.name}, {biggest.vram_gib:.0f} GiB): turn on --gradient-checkpointing or lower --batch-size")
    return min(fitting, key=lambda g: (_modal_plan(config, g)[1], g.usd_per_second))


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
           local_gpus: list[LocalGpu] | tuple[LocalGpu, ...] = ()) -> Decision:
    """Decide where ``config`` runs. Pure: the local GPUs are passed in (``detect_local_gpus()``)."""
    estimate = estimate_peak_vram(config)
    offer = modal_gpu(gpu) if gpu is not None else None
    implied = offer is not None and where == "auto"
    where = where_asked(where, gpu, config.device)

    local = _local_gpu_for(config.device, local_gpus)
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
            if estimate.family == "sdxl":
                warnings.append("SDXL on the CPU takes minutes per step; --where modal runs it on a cloud GPU")
            return Decision("local", None, estimate, local, fits, None, 0.0, reason, tuple(warnings))
        if not fits:
            warnings.append(f"the estimate ({estimate.required_gib:.1f} GiB with margin) is more than the "
                            f"{local.free_gib:.1f} GiB free: it may run out of memory (--continue-on-modal "
                            "carries on in the cloud from the last checkpoint)")
        speed = _local_speed(local.name)
        seconds = estimate_seconds(config, speed) if speed else None
        return Decision("local", local.name, estimate, local, fits, seconds, 0.0, reason, tuple(warnings))

    warnings = []
    if offer is None:
        offer = choose_gpu(config, estimate)
        reason += f"; {offer.name} is the cheapest Modal GPU it fits"
    elif estimate.required_gib > offer.vram_gib:
        warnings.append(f"the estimate ({estimate.required_gib:.1f} GiB with margin) is more than the "
                        f"{offer.name}'s {offer.vram_gib:.0f} GiB: it may run out of memory")
    seconds, cost = _modal_plan(config, offer)
    return Decision("modal", offer.name, estimate, local, fits, seconds, cost, reason, tuple(warnings))


def _local_gpu_for(device: str, gpus: list[LocalGpu] | tuple[LocalGpu, ...]) -> LocalGpu | None:
    if not gpus or device == "cpu":
        return None
    if device.startswith("cuda:"):
        index = int(device.removeprefix("cuda:"))
        return next((g for g in gpus if g.index == index), None)
    return max(gpus, key=lambda g: g.free_gib)


# --- Out of memory -----------------------------------------------------------------------------------
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
    from engine.errors import TrainingCancelled

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
