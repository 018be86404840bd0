"""A training run's peak memory phase by phase, and the savers chosen so that it fits a card.

The trainer works in phases, each loading what it needs and freeing it before the next:

    caching   text encoders and VAE on the device; prompts and latents encoded, one image at a time
    load      the encoders leave; the UNet arrives with its LoRA
    loop      UNet + LoRA state + activations of one step
    sampling  the UNet denoises a batch of a grid's images, then the VAE decodes each, tile by tile

``estimate_phases(config, plan, on_cpu)`` gives each phase's peak; ``choose_plan(config, free_gib, on_cpu)``
turns on a saver (8-bit optimizer states, gradient checkpointing) only where the run would not fit
``free_gib`` without it, then tiles the sample grids' decode and picks how many grid images the UNet
denoises at once so that sampling stays inside the loop's peak. Pure: the free memory is passed in
(``engine.models.device.free_memory_gib`` asks).

Weights and LoRA state are counted from SDXL's parameter counts. The rest are coefficients per
1024x1024 image, most measured on an H200 (``bench/calibration/sdxl_phases_measured.json``, checked
to 15 % by the tests); the ones no GPU has measured yet say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from engine.training.config import TrainConfig

GIB = 2**30
PHASES = ("caching", "load", "loop", "sampling")

# --- Counted --------------------------------------------------------------------------------------
# Parameter counts of SDXL base 1.0, counted by instantiating its configs on torch's meta device.
SDXL_UNET_PARAMS = 2_567_463_684
SDXL_TEXT_ENCODER_PARAMS = 123_060_480 + 694_659_840  # CLIP ViT-L + OpenCLIP ViT-bigG
SDXL_VAE_PARAMS = 83_653_863
# LoRA parameters per unit of rank on the attention projections (engine.models.lora_files' target modules).
SDXL_UNET_LORA_PER_RANK = 1_451_520
SDXL_TEXT_ENCODER_LORA_PER_RANK = 73_728 + 327_680

# --- Calibrated: GiB per 1024x1024 image, half precision, memory-efficient attention ---------------
# Measured (H200, bf16, SDPA; bench/calibration/sdxl_phases_measured.json): a bare UNet step with the
# LoRA and 8-bit AdamW peaked at 5.8 GiB with checkpointing and 12.4 GiB without; weights and LoRA
# state are 5.0 of that.
UNET_ACTIVATIONS_CHECKPOINTED_GIB = 0.8
UNET_ACTIVATIONS_FULL_GIB = 7.4
# Measured: the trainer's own loop peaked at 6.9 GiB where the bare step took 5.8; the cause was not
# isolated (loss in fp32, the autocast cast cache, allocator rounding), so half the gap is counted and
# both points stay within 10 %.
TRAINER_LOOP_EXTRA_GIB = 0.55
# Measured: the fp32 VAE encoding 8 images at once peaked at 30.9 GiB with 6.7 GiB of weights resident:
# 3.0 GiB per image.
VAE_ENCODE_FP32_GIB = 3.0
# NOT measured yet (the GPU benchmark will): the UNet's inference activations for one image, and the
# fp32 VAE decoding a whole 1024-px image (the figure the estimate used before any measurement).
UNET_INFERENCE_GIB = 0.5
VAE_DECODE_FP32_GIB = 3.0
TEXT_ENCODER_ACTIVATIONS_GIB = 0.3  # per prompt, when the text encoders train (77 tokens: small)
# Sample grids decode whole, or in the largest of these tiles (pixels; diffusers' tiled VAE decode,
# 25 % overlap) that keeps sampling inside the loop's peak. They denoise the largest batch of the grid's
# images that keeps it there too.
DECODE_TILES_PX = (512, 256)
# What nvidia-smi shows beyond torch's allocations: the CUDA context and kernels.
CUDA_CONTEXT_GIB = 0.6
# On the CPU: the process itself (Python, torch, diffusers) before any weight arrives.
PROCESS_BASELINE_GIB = 0.6
# The decision asks for this much more than the estimate, for allocator fragmentation and estimate error.
SAFETY_MARGIN = 0.10
# The built-in tiny model: a few MB of weights, any activations at its sizes are small.
TINY_PHASE_GIB = 0.25


@dataclass(frozen=True)
class MemoryPlan:
    """How a run spends memory: which savers are on, and how much the VAE works on at once."""

    gradient_checkpointing: bool
    optimizer: Literal["adamw8bit", "adamw"]
    vae_encode_batch: int = 1  # images the VAE encodes at once while caching latents
    decode_tile_px: int | None = None  # sample grids decode in tiles this big; None = whole
    # Sample images denoised together (each pass is twice that with guidance): one at a time leaves a
    # big card launch-bound, so as many as fit inside the loop's peak.
    sample_batch: int = 1
    # False only to model the trainer before issue 11 (everything on the GPU while caching), whose
    # measured peaks are calibration points.
    staged: bool = True
    reason: str = ""  # one line: why these savers

    def savers(self) -> str:
        """The savers in words: 'gradient checkpointing on, 8-bit AdamW, sample batch 1'."""
        return (f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
                f"{'8-bit AdamW' if self.optimizer == 'adamw8bit' else 'torch AdamW'}, "
                f"sample batch {self.sample_batch}")

    def to_json(self) -> dict:
        return {"gradient_checkpointing": self.gradient_checkpointing, "optimizer": self.optimizer,
                "vae_encode_batch": self.vae_encode_batch, "decode_tile_px": self.decode_tile_px,
                "sample_batch": self.sample_batch, "reason": self.reason}


@dataclass(frozen=True)
class PhaseEstimate:
    """Each phase's peak in GiB of the device's memory (torch's allocations), plus what the device
    holds besides (the CUDA context, or the process on the CPU)."""

    phases: dict[str, float]
    overhead_gib: float
    parts: dict[str, float] = field(default_factory=dict)  # the loop's peak, part by part

    @property
    def peak_gib(self) -> float:
        """The whole run's peak, as nvidia-smi (or the process's resident size) would show it."""
        return max(self.phases.values()) + self.overhead_gib

    @property
    def required_gib(self) -> float:
        return self.peak_gib * (1 + SAFETY_MARGIN)


def _image_units(config: TrainConfig) -> tuple[float, int]:
    """(pixels relative to 1024x1024, images in a step's batch)."""
    return (config.resolution / 1024) ** 2, config.batch_size + (1 if config.prior_preservation else 0)


def estimate_phases(config: TrainConfig, plan: MemoryPlan, on_cpu: bool = False) -> PhaseEstimate:
    """Peak memory of each phase of ``config`` run with ``plan``, on a CUDA card or (``on_cpu``) in RAM."""
    if config.base == "tiny":
        overhead = PROCESS_BASELINE_GIB if on_cpu else CUDA_CONTEXT_GIB
        return PhaseEstimate(dict.fromkeys(PHASES, TINY_PHASE_GIB), overhead, {"tiny model": TINY_PHASE_GIB})
    # 1. Precision: half on CUDA unless asked for fp32; the CPU always trains in fp32.
    full = on_cpu or config.mixed_precision == "no"
    weight_bytes, act_scale = (4, 2.0) if full else (2, 1.0)
    pixels, images = _image_units(config)
    unet = SDXL_UNET_PARAMS * weight_bytes / GIB
    text = SDXL_TEXT_ENCODER_PARAMS * weight_bytes / GIB
    vae = SDXL_VAE_PARAMS * 4 / GIB  # the VAE stays fp32: SDXL's VAE overflows in fp16
    # 2. The LoRA: fp32 weights and gradients, and AdamW's two moments (8-bit: a quarter of the bytes).
    lora_params = config.rank * (SDXL_UNET_LORA_PER_RANK
                                 + (SDXL_TEXT_ENCODER_LORA_PER_RANK if config.train_text_encoder else 0))
    lora_weights = lora_params * 4 / GIB
    optimizer_state = lora_params * (2 if plan.optimizer == "adamw8bit" else 8) / GIB

    # 3. Which weights are resident in each phase. On the CPU nothing moves: everything stays in RAM.
    # The unstaged trainer (before issue 11) had every model on the GPU until the loop began.
    resident_early = on_cpu or not plan.staged
    resident_always = on_cpu
    frozen = unet + text + vae
    trains_text = text if config.train_text_encoder else 0.0
    keeps_vae = vae if not config.cache_latents else 0.0

    caching_weights = frozen + lora_weights if resident_early else text + vae
    caching = caching_weights + VAE_ENCODE_FP32_GIB * pixels * plan.vae_encode_batch

    load = frozen + lora_weights if resident_early else unet + lora_weights + trains_text + keeps_vae

    parts = {"UNet weights": unet}
    if resident_always:
        parts["text encoder and VAE weights"] = text + vae
    else:
        if trains_text:
            parts["text encoder weights"] = trains_text
        if keeps_vae:
            parts["VAE weights"] = keeps_vae
    parts["LoRA weights, gradients, optimizer"] = 2 * lora_weights + optimizer_state
    per_image = UNET_ACTIVATIONS_CHECKPOINTED_GIB if plan.gradient_checkpointing else UNET_ACTIVATIONS_FULL_GIB
    parts["activations"] = per_image * images * pixels * act_scale + TRAINER_LOOP_EXTRA_GIB
    if config.train_text_encoder:
        prompts = 2 if config.prior_preservation else 1
        parts["text encoder activations"] = TEXT_ENCODER_ACTIVATIONS_GIB * prompts * act_scale
    if not config.cache_latents:
        parts["VAE encode"] = VAE_ENCODE_FP32_GIB * pixels * min(plan.vae_encode_batch, config.batch_size)
    loop = sum(parts.values())

    # 4. Sampling: no gradients (zeroed to None after each step), the optimizer state stays; the VAE is
    # back; the UNet denoises plan.sample_batch images with guidance (twice that a pass), then the VAE
    # decodes them one at a time, tile by tile.
    held = (frozen - vae if resident_always else unet + trains_text) + lora_weights + optimizer_state
    denoise = UNET_INFERENCE_GIB * 2 * plan.sample_batch * pixels * act_scale
    tile = 1.0 if plan.decode_tile_px is None else min(1.0, (plan.decode_tile_px / config.resolution) ** 2)
    decode = VAE_DECODE_FP32_GIB * pixels * tile
    sampling = held + vae + max(denoise, decode) if config.sample_every else 0.0

    phases = {"caching": caching, "load": load, "loop": loop, "sampling": sampling}
    overhead = PROCESS_BASELINE_GIB if on_cpu else CUDA_CONTEXT_GIB
    return PhaseEstimate({k: round(v, 2) for k, v in phases.items()}, overhead,
                         {k: round(v, 2) for k, v in parts.items()})


# Savers from the cheapest in speed to the dearest: 8-bit states cost a little per step and save
# little (a rank-16 LoRA's AdamW state is 0.17 GiB); checkpointing saves gigabytes and costs 2.2x a
# step (measured: 0.836 against 0.379 s on an H200).
_CANDIDATES = ((False, "adamw"), (False, "adamw8bit"), (True, "adamw"), (True, "adamw8bit"))


def choose_plan(config: TrainConfig, free_gib: float | None, on_cpu: bool = False,
                optimizer_of_resumed_run: str | None = None) -> MemoryPlan:
    """The fastest savers with which ``config`` fits ``free_gib`` (with the margin); explicit choices win.

    ``free_gib`` None: the device's free memory is unknown, so every saver left on auto is on.
    ``optimizer_of_resumed_run``: a resumed run keeps the optimizer its checkpoint's state belongs to.
    """
    plan = _choose_savers(config, free_gib, on_cpu, optimizer_of_resumed_run)
    # Sampling must not be what runs out of memory: tile the decode until it fits inside the loop's peak.
    for tile in (None, *DECODE_TILES_PX):
        plan = replace(plan, decode_tile_px=tile)
        if _sampling_fits(config, plan, on_cpu):
            break
    return replace(plan, sample_batch=_largest_sample_batch(config, plan, on_cpu))


def _sampling_fits(config: TrainConfig, plan: MemoryPlan, on_cpu: bool) -> bool:
    phases = estimate_phases(config, plan, on_cpu).phases
    return phases["sampling"] <= phases["loop"]


def _largest_sample_batch(config: TrainConfig, plan: MemoryPlan, on_cpu: bool) -> int:
    """The most of a grid's images the UNet can denoise at once inside the loop's peak; at least one.

    The same rule as the decode's tiles, so batching never makes sampling the run's peak. The sampling
    estimate grows with the batch, so a bisection finds it (a grid may hold 64 x 64 images).
    """
    if not config.sample_every:
        return 1  # no grids to draw
    low, high = 1, len(config.validation_prompts) * len(config.sample_seeds)
    while low < high:
        middle = (low + high + 1) // 2
        if _sampling_fits(config, replace(plan, sample_batch=middle), on_cpu):
            low = middle
        else:
            high = middle - 1
    return low


def _choose_savers(config: TrainConfig, free_gib: float | None, on_cpu: bool,
                   optimizer_of_resumed_run: str | None) -> MemoryPlan:
    want_ckpt = {"on": True, "off": False}.get(config.gradient_checkpointing)
    resumed = config.optimizer == "auto" and optimizer_of_resumed_run is not None
    want_opt = config.optimizer if config.optimizer != "auto" else optimizer_of_resumed_run
    candidates = [(c, o) for c, o in _CANDIDATES
                  if (want_ckpt is None or c == want_ckpt) and (want_opt is None or o == want_opt)]
    device = "RAM" if on_cpu else "GPU memory"
    if len(candidates) == 1:  # nothing left on auto
        return MemoryPlan(*candidates[0], reason="as asked" + ("; the optimizer of the run resumed" if resumed else ""))
    if free_gib is None:
        ckpt, opt = candidates[-1]
        return MemoryPlan(ckpt, opt, reason=f"free {device} unknown: every saver left on auto is on")
    for ckpt, opt in candidates:
        plan = MemoryPlan(ckpt, opt, decode_tile_px=DECODE_TILES_PX[-1])
        estimate = estimate_phases(config, plan, on_cpu)
        if estimate.required_gib <= free_gib:
            return MemoryPlan(ckpt, opt, reason=_why(config, plan, candidates, free_gib, estimate, on_cpu))
    ckpt, opt = candidates[-1]
    needed = estimate_phases(config, MemoryPlan(ckpt, opt, decode_tile_px=DECODE_TILES_PX[-1]), on_cpu).required_gib
    return MemoryPlan(ckpt, opt, reason=f"needs {needed:.1f} GiB even with every saver, {free_gib:.1f} GiB "
                                        f"{device} free: every saver on")


def _why(config: TrainConfig, plan: MemoryPlan, candidates: list, free_gib: float, estimate: PhaseEstimate,
         on_cpu: bool) -> str:
    device = "RAM" if on_cpu else "GPU memory"
    fits = f"needs {estimate.required_gib:.1f} GiB with the margin, {free_gib:.1f} GiB {device} free"
    if (plan.gradient_checkpointing, plan.optimizer) == candidates[0]:
        asked = len(candidates) < len(_CANDIDATES)
        return f"{fits}: {'nothing more needed than asked' if asked else 'no saver needed'}"
    fastest = estimate_phases(config, MemoryPlan(*candidates[0], decode_tile_px=DECODE_TILES_PX[-1]), on_cpu)
    return f"{fits}; {fastest.required_gib:.1f} GiB without these savers"
