"""A training run's peak memory phase by phase, and the savers chosen so that it fits a card.

The trainer works in phases, each loading what it needs and freeing it before the next:

    caching   text encoders and VAE on the device; prompts and latents encoded, one image at a time
    load      the encoders leave; the UNet arrives with its LoRA
    loop      UNet + LoRA state + activations of one step
    sampling  the UNet denoises a batch of a grid's images, then the VAE decodes each, tile by tile

``estimate_phases(config, plan, on_cpu)`` gives each phase's peak; ``choose_plan(config, free_gib, on_cpu)``
turns on a saver (8-bit optimizer states, gradient checkpointing) only where the run would not fit
``free_gib`` without it, checkpointing only as many of the UNet's blocks as the card needs: the set
that recomputes the fewest FLOPs (``recompute_share``) among those that fit, from the per-block table
``data/sdxl_checkpoint_blocks.json`` (``bench/checkpoint_blocks.py``). It then tiles the sample grids' decode and picks how many grid images the UNet
denoises at once so that sampling stays inside the loop's peak. Pure: the free memory is passed in
(``engine.models.device.free_memory_gib`` asks).

Weights and LoRA state are counted from SDXL's parameter counts. The rest are coefficients per
1024x1024 image, most measured on an H200 (``bench/calibration/sdxl_phases_measured.json``, checked
to 15 % by the tests); the ones no GPU has measured yet say so.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
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
# Measured: the trainer before issue 11 (every model on the card, staged: false) peaked at 6.9 GiB in its
# loop where the bare step took 5.8; half that gap is counted for it, so both points stay within 10 %.
# Simulated (engine.training.full_size_sim): today's staged trainer holds no more than the bare step
# (5.52 GiB counted with every block checkpointed and torch AdamW, against the bare step's 5.63 with
# 8-bit AdamW), but partial checkpointing held up to 0.17 GiB more than the block table's sum (the
# 8 GB card's plans at rank 4 and 16), so it gets a little.
TRAINER_LOOP_EXTRA_GIB = 0.55
STAGED_LOOP_EXTRA_GIB = 0.25
# Simulated: autocast keeps a half-precision copy of every fp32 LoRA weight it casts until its context
# ends (rank 64's sample grids held 0.12 GiB over the estimate without them): half the LoRA's bytes more.
AUTOCAST_COPY_SHARE = 0.5
# Measured: the fp32 VAE encoding 8 images at once peaked at 30.9 GiB with 6.7 GiB of weights resident:
# 3.0 GiB per image.
VAE_ENCODE_FP32_GIB = 3.0
# Simulated, not yet measured on a GPU (bench/calibration/sdxl_phases_simulated.json, whose rows a test
# holds the estimate to): a sample grid's UNet denoising took 0.19 GiB per 1024-px image and pass (12
# at once: 2.27 GiB over the weights held), counted +10 % for what the count leaves out; the fp32 VAE
# decoding a whole 1024-px image 2.92 GiB, counted +13.7 %, the share cuDNN's convolution workspaces
# added to the VAE's encoding on the H200.
UNET_INFERENCE_GIB = 0.21
VAE_DECODE_FP32_GIB = 3.3
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

    gradient_checkpointing: bool  # any block recomputed in backward
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
    # The blocks recomputed in backward (engine.training.checkpointing's names); None: every block when
    # gradient_checkpointing, else none. choose_plan always names them.
    checkpointed: tuple[str, ...] | None = None
    # Of the FLOPs full checkpointing recomputes, the share this plan recomputes (0-1); and the same
    # FLOPs as a share of one forward pass (what a step pays on top).
    recompute_share: float | None = None
    recompute_forward_share: float | None = None
    blocks_total: int | None = None  # checkpointable blocks in the model

    @property
    def share(self) -> float:
        """``recompute_share``, or what the on/off flag means where no blocks were named."""
        if self.recompute_share is not None:
            return self.recompute_share
        return 1.0 if self.gradient_checkpointing else 0.0

    def checkpointing(self) -> str:
        """Checkpointing in words: 'off', 'on (every block)', 'on 12 of 28 blocks (recomputes 23 % of the forward)'."""
        if not self.gradient_checkpointing:
            return "off"
        forward = (f", recomputes {self.recompute_forward_share * 100:.0f} % of the forward"
                   if self.recompute_forward_share is not None else "")
        if self.checkpointed is None or self.share >= 1.0:
            return f"on{' (every block' + forward + ')' if forward else ''}"
        return f"on {len(self.checkpointed)} of {self.blocks_total} blocks ({self.share * 100:.0f} % of full checkpointing{forward})"

    def savers(self) -> str:
        """The savers in words: 'gradient checkpointing on, 8-bit AdamW, sample batch 1'."""
        return (f"gradient checkpointing {self.checkpointing()}, "
                f"{'8-bit AdamW' if self.optimizer == 'adamw8bit' else 'torch AdamW'}, "
                f"sample batch {self.sample_batch}")

    def to_json(self) -> dict:
        return {"gradient_checkpointing": self.gradient_checkpointing, "optimizer": self.optimizer,
                "checkpointed_blocks": list(self.checkpointed) if self.checkpointed is not None else None,
                "recompute_share": None if self.recompute_share is None else round(self.recompute_share, 4),
                "recompute_forward_share": (None if self.recompute_forward_share is None
                                            else round(self.recompute_forward_share, 4)),
                "vae_encode_batch": self.vae_encode_batch, "decode_tile_px": self.decode_tile_px,
                "sample_batch": self.sample_batch, "blocks_total": self.blocks_total, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict) -> MemoryPlan:
        """The plan ``to_json`` wrote (a calibration point's, a run's)."""
        blocks = data.get("checkpointed_blocks")
        return cls(data["gradient_checkpointing"], data["optimizer"], vae_encode_batch=data["vae_encode_batch"],
                   decode_tile_px=data["decode_tile_px"], sample_batch=data["sample_batch"],
                   reason=data.get("reason", ""), checkpointed=None if blocks is None else tuple(blocks),
                   recompute_share=data.get("recompute_share"),
                   recompute_forward_share=data.get("recompute_forward_share"), blocks_total=data.get("blocks_total"))


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
    tile = 1.0 if plan.decode_tile_px is None else min(1.0, (plan.decode_tile_px / config.resolution) ** 2)
    decode = VAE_DECODE_FP32_GIB * pixels * tile
    casts = 0.0 if full else AUTOCAST_COPY_SHARE * lora_weights
    if config.prior_preservation:
        # The class images are drawn while caching (once per base and size), one at a time as a grid
        # image is: the UNet and the VAE on the device, the text encoders not.
        drawing_weights = frozen + lora_weights if resident_early else unet + lora_weights + vae
        drawing = drawing_weights + casts + max(UNET_INFERENCE_GIB * 2 * pixels * act_scale, decode)
        caching = max(caching, drawing)

    load = frozen + lora_weights if resident_early else unet + lora_weights + trains_text + keeps_vae

    parts = {"UNet weights": unet}
    if resident_always:
        parts["text encoder and VAE weights"] = text + vae
    else:
        if trains_text:
            parts["text encoder weights"] = trains_text
        if keeps_vae:
            parts["VAE weights"] = keeps_vae
    parts["LoRA weights, gradients, optimizer"] = 2 * lora_weights + optimizer_state + casts
    parts["activations"] = (unet_activations_gib(plan) * images * pixels * act_scale
                            + (STAGED_LOOP_EXTRA_GIB if plan.staged else TRAINER_LOOP_EXTRA_GIB))
    if config.train_text_encoder:
        prompts = 2 if config.prior_preservation else 1
        parts["text encoder activations"] = text_encoder_activations_gib(plan) * prompts * act_scale
    if not config.cache_latents:
        parts["VAE encode"] = VAE_ENCODE_FP32_GIB * pixels * min(plan.vae_encode_batch, config.batch_size)
    loop = sum(parts.values())

    # 4. Sampling: no gradients (zeroed to None after each step), the optimizer state stays; the VAE is
    # back; the UNet denoises plan.sample_batch images with guidance (twice that a pass), then the VAE
    # decodes them one at a time, tile by tile.
    held = (frozen - vae if resident_always else unet + trains_text) + lora_weights + optimizer_state + casts
    denoise = UNET_INFERENCE_GIB * 2 * plan.sample_batch * pixels * act_scale
    sampling = held + vae + max(denoise, decode) if config.sample_every else 0.0

    phases = {"caching": caching, "load": load, "loop": loop, "sampling": sampling}
    overhead = PROCESS_BASELINE_GIB if on_cpu else CUDA_CONTEXT_GIB
    return PhaseEstimate({k: round(v, 2) for k, v in phases.items()}, overhead,
                         {k: round(v, 2) for k, v in parts.items()})


# --- Checkpointing by block ------------------------------------------------------------------------
BLOCK_TABLE = Path(__file__).parent / "data" / "sdxl_checkpoint_blocks.json"


@dataclass(frozen=True)
class Block:
    """One checkpointable block: what checkpointing it frees and what recomputing it costs."""

    name: str
    gib: float  # activations kept for backward without checkpointing, GiB per 1024-px image (or prompt)
    flops: float  # forward FLOPs per 1024-px image (or prompt): recomputed once when checkpointed
    flops_quadratic: float = 0.0  # the part that grows with the square of the pixels (self-attention)
    text: bool = False  # a text-encoder layer: counted per prompt, only when the text encoders train

    def flops_at(self, pixels: float) -> float:
        return self.flops * (1.0 if self.text else pixels) + self.flops_quadratic * pixels**2


@functools.cache
def block_table(family: str = "sdxl") -> dict:
    """The committed per-block table of ``family`` ('sdxl' or 'tiny'), as bench/checkpoint_blocks.py wrote it."""
    path = BLOCK_TABLE if family == "sdxl" else BLOCK_TABLE.with_name(f"{family}_checkpoint_blocks.json")
    return json.loads(path.read_text())


def checkpointable_blocks(config: TrainConfig) -> list[Block]:
    """The blocks ``config`` can checkpoint: the UNet's, and the text encoders' layers when they train."""
    table = block_table("tiny" if config.base == "tiny" else "sdxl")
    blocks = [Block(b["name"], b["gib"], b["flops"], b.get("flops_quadratic", 0.0)) for b in table["unet_blocks"]]
    if config.train_text_encoder:
        blocks += [Block(b["name"], b["gib"], b["flops"], text=True) for b in table["text_encoder_layers"]]
    return blocks


def unet_activations_gib(plan: MemoryPlan) -> float:
    """The UNet's activations for one 1024-px image under ``plan``: what full checkpointing keeps, plus
    every block left whole."""
    if plan.checkpointed is None:
        return UNET_ACTIVATIONS_CHECKPOINTED_GIB if plan.gradient_checkpointing else UNET_ACTIVATIONS_FULL_GIB
    kept = [b for b in block_table()["unet_blocks"] if b["name"] not in set(plan.checkpointed)]
    return UNET_ACTIVATIONS_CHECKPOINTED_GIB + sum(b["gib"] for b in kept)


def text_encoder_activations_gib(plan: MemoryPlan) -> float:
    """Both text encoders' activations for one prompt under ``plan``; the layers checkpointed keep none."""
    if plan.checkpointed is None:
        return 0.0 if plan.gradient_checkpointing else TEXT_ENCODER_ACTIVATIONS_GIB
    layers = block_table()["text_encoder_layers"]
    kept = sum(b["gib"] for b in layers if b["name"] not in set(plan.checkpointed))
    return TEXT_ENCODER_ACTIVATIONS_GIB * kept / sum(b["gib"] for b in layers)


def checkpointing_plan(config: TrainConfig, plan: MemoryPlan, names) -> MemoryPlan:
    """``plan`` with ``names`` checkpointed, and what that recomputes."""
    blocks = checkpointable_blocks(config)
    chosen = {b.name for b in blocks} & set(names)
    pixels, images = _image_units(config)

    def cost(block: Block) -> float:
        return _block_flops(config, block)

    full = sum(cost(b) for b in blocks)
    recomputed = sum(cost(b) for b in blocks if b.name in chosen)
    table = block_table("tiny" if config.base == "tiny" else "sdxl")
    forward = (table["unet_forward_flops"] * pixels + table.get("unet_forward_flops_quadratic", 0) * pixels**2) * images
    forward += sum(cost(b) for b in blocks if b.text)  # the text encoders' forward is all layers
    return replace(plan, gradient_checkpointing=bool(chosen),
                   checkpointed=tuple(b.name for b in blocks if b.name in chosen),
                   recompute_share=recomputed / full if full else 0.0,
                   recompute_forward_share=recomputed / forward if forward else 0.0, blocks_total=len(blocks))


def _most_value(items: list[tuple[float, float]], capacity: float, steps: int = 800) -> set[int]:
    """The items (value, weight) of the greatest total value whose weights fit ``capacity``: a 0/1 knapsack
    over weights in ``steps`` units of the capacity, each weight rounded up, so the set found never
    exceeds it."""
    if capacity <= 0:
        return {i for i, (_, weight) in enumerate(items) if weight <= 0}
    if sum(w for _, w in items) <= capacity:
        return set(range(len(items)))
    unit = capacity / steps
    weights = [math.ceil(w / unit - 1e-9) for _, w in items]
    best = [0.0] * (steps + 1)
    took = []
    for (value, _), weight in zip(items, weights, strict=True):
        row = [False] * (steps + 1)
        for c in range(steps, weight - 1, -1):
            if best[c - weight] + value > best[c]:
                best[c], row[c] = best[c - weight] + value, True
        took.append(row)
    chosen, c = set(), steps
    for i in range(len(items) - 1, -1, -1):
        if took[i][c]:
            chosen.add(i)
            c -= weights[i]
    # What the rounding up left unused takes any item that still fits, the most value per weight first.
    used = sum(items[i][1] for i in chosen)
    for i in sorted(set(range(len(items))) - chosen, key=lambda i: -items[i][0] / max(items[i][1], 1e-12)):
        if used + items[i][1] <= capacity:
            chosen.add(i)
            used += items[i][1]
    return chosen


def _block_flops(config: TrainConfig, block: Block) -> float:
    """What recomputing ``block`` costs a step of ``config``: its forward FLOPs over the step's images
    (or prompts, for a text-encoder layer)."""
    pixels, images = _image_units(config)
    prompts = 2 if config.prior_preservation else 1
    return block.flops_at(pixels) * (prompts if block.text else images)


def _block_gib(config: TrainConfig, block: Block, on_cpu: bool) -> float:
    """What keeping ``block`` whole adds to the loop's peak, for ``config``."""
    pixels, images = _image_units(config)
    act_scale = 2.0 if on_cpu or config.mixed_precision == "no" else 1.0
    if block.text:
        prompts = 2 if config.prior_preservation else 1
        total = sum(b["gib"] for b in block_table()["text_encoder_layers"])
        return TEXT_ENCODER_ACTIVATIONS_GIB * block.gib / total * prompts * act_scale
    return block.gib * images * pixels * act_scale


def least_recompute(config: TrainConfig, plan: MemoryPlan, free_gib: float, on_cpu: bool) -> MemoryPlan | None:
    """``plan`` with the blocks checkpointed that recompute the fewest FLOPs while the run still fits
    ``free_gib`` with the margin; None where it does not fit even with every block checkpointed."""
    blocks = checkpointable_blocks(config)
    every = checkpointing_plan(config, plan, [b.name for b in blocks])
    estimate = estimate_phases(config, every, on_cpu)
    if estimate.required_gib > free_gib:
        return None
    # The loop may grow by what keeping blocks whole costs, up to the free memory less the margin;
    # every other phase stays where it is.
    room = free_gib / (1 + SAFETY_MARGIN) - estimate.overhead_gib - estimate.phases["loop"]
    keep = _most_value([(_block_flops(config, b), _block_gib(config, b, on_cpu)) for b in blocks], room)
    return checkpointing_plan(config, plan, [b.name for i, b in enumerate(blocks) if i not in keep])


def fraction_plan(config: TrainConfig, plan: MemoryPlan, fraction: float) -> MemoryPlan:
    """``plan`` with the blocks checkpointed that free the most memory while recomputing at most
    ``fraction`` of what full checkpointing does."""
    blocks = checkpointable_blocks(config)
    costs = [_block_flops(config, b) for b in blocks]
    chosen = _most_value([(_block_gib(config, b, False), cost) for b, cost in zip(blocks, costs, strict=True)],
                         fraction * sum(costs))
    return checkpointing_plan(config, plan, [b.name for i, b in enumerate(blocks) if i in chosen])


# Savers from the cheapest in speed to the dearest: 8-bit states cost a little per step and save
# little (a rank-16 LoRA's AdamW state is 0.17 GiB); checkpointing saves gigabytes and costs up to
# 2.2x a step (measured with every block: 0.836 against 0.379 s on an H200), so as few blocks as fit.
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
    resumed = config.optimizer == "auto" and optimizer_of_resumed_run is not None
    want_opt = config.optimizer if config.optimizer != "auto" else optimizer_of_resumed_run
    optimizers = [want_opt] if want_opt is not None else ["adamw", "adamw8bit"]
    asked = config.gradient_checkpointing
    device = "RAM" if on_cpu else "GPU memory"
    every = [b.name for b in checkpointable_blocks(config)]

    def fixed(optimizer: str) -> MemoryPlan:
        """The plan for a checkpointing the user chose: every block, none, or a fraction's blocks."""
        plan = MemoryPlan(False, optimizer, decode_tile_px=DECODE_TILES_PX[-1])
        if asked == "on":
            return checkpointing_plan(config, plan, every)
        if asked == "off":
            return checkpointing_plan(config, plan, [])
        return fraction_plan(config, plan, float(asked))

    def final(plan: MemoryPlan, reason: str) -> MemoryPlan:
        return replace(plan, decode_tile_px=None, reason=reason)

    if asked != "auto" and len(optimizers) == 1:  # nothing left on auto
        return final(fixed(optimizers[0]), "as asked" + ("; the optimizer of the run resumed" if resumed else ""))
    if free_gib is None:
        plan = fixed(optimizers[-1]) if asked != "auto" else checkpointing_plan(
            config, MemoryPlan(False, optimizers[-1]), every)
        return final(plan, f"free {device} unknown: every saver left on auto is on")
    # Each optimizer with the least checkpointing that fits; of those, the one that recomputes least
    # (torch AdamW first where both recompute the same: it is a little faster a step).
    fitting = []
    for optimizer in optimizers:
        if asked == "auto":
            plan = least_recompute(config, MemoryPlan(False, optimizer, decode_tile_px=DECODE_TILES_PX[-1]),
                                   free_gib, on_cpu)
        else:
            plan = fixed(optimizer)
        if plan is not None and estimate_phases(config, plan, on_cpu).required_gib <= free_gib:
            fitting.append(plan)
    if fitting:
        plan = min(fitting, key=lambda p: p.share)
        return final(plan, _why(config, plan, free_gib, on_cpu, asked != "auto", len(optimizers) == 1))
    plan = fixed(optimizers[-1]) if asked != "auto" else checkpointing_plan(
        config, MemoryPlan(False, optimizers[-1], decode_tile_px=DECODE_TILES_PX[-1]), every)
    needed = estimate_phases(config, plan, on_cpu).required_gib
    return final(plan, f"needs {needed:.1f} GiB even with every saver, {free_gib:.1f} GiB {device} free: "
                       "every saver on")


def _why(config: TrainConfig, plan: MemoryPlan, free_gib: float, on_cpu: bool, checkpointing_asked: bool,
         optimizer_asked: bool) -> str:
    device = "RAM" if on_cpu else "GPU memory"
    fits = f"needs {estimate_phases(config, plan, on_cpu).required_gib:.1f} GiB with the margin, {free_gib:.1f} GiB {device} free"
    fastest = checkpointing_plan(config, replace(plan, optimizer="adamw" if not optimizer_asked else plan.optimizer),
                                 [] if not checkpointing_asked else plan.checkpointed)
    if fastest.optimizer == plan.optimizer and fastest.share == plan.share:
        asked = checkpointing_asked or optimizer_asked
        return f"{fits}: {'nothing more needed than asked' if asked else 'no saver needed'}"
    without = estimate_phases(config, fastest, on_cpu).required_gib
    why = f"{fits}; {without:.1f} GiB without these savers"
    if plan.gradient_checkpointing and not checkpointing_asked and plan.share < 1.0:
        # Which blocks, and why these: the least recomputation that fits.
        why += (f"; the {len(plan.checkpointed)} blocks checkpointed are the fewest FLOPs to recompute "
                "that fit")
    return why
