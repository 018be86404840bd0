"""The typed configuration of a training run: built once from CLI flags or a config file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.errors import LikenessError
from engine.prompts import fill

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# numpy's generators take seeds below 2**32: a larger one fails minutes into a run.
MAX_SEED = 2**32 - 1
# Bounds a config is checked against before it is accepted. Every number is finite (no Infinity or
# NaN: an infinite guidance draws a black image), and whole numbers are strict (`true` is not 1).
MAX_STEPS = 100_000
MAX_SIDE = 4096
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)]

# Fixed prompts for the sample grids: the same prompts and seeds at every step, so the grids
# show one model going from generic to specific rather than a new lottery each time.
DEFAULT_VALIDATION_PROMPTS = (
    "a photo of {token} {class_word}",
    "a portrait of {token} {class_word} smiling, studio lighting",
    "{token} {class_word} as an astronaut, digital art",
)


class TrainConfig(BaseModel):
    """Everything that decides what a training run does. Stored whole in run.json and checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: Path = Field(description="A prepared dataset (likeness prep) or a folder of photos.")
    out: Path = Field(description="Run directory: LoRA, checkpoints, sample grids, metrics, run.json.")
    prep: bool = Field(
        default=True,
        description="Prepare a raw photo folder first (find, crop and filter the face) into RUN_DIR/dataset; "
        "off: use the images as they are, resized and centre-cropped. A prepared dataset is used as it is.",
    )
    base: str = Field(
        default=DEFAULT_BASE,
        description="Base model: a Hugging Face repo id, a local diffusers folder, a .safetensors file, or 'tiny'.",
    )
    steps: int = Field(default=500, gt=0, le=MAX_STEPS, strict=True, description="Optimizer steps to train for.")
    rank: int = Field(default=16, gt=0, le=1024, strict=True, description="LoRA rank (dimension of the low-rank update).")
    alpha: float | None = Field(
        default=None, gt=0, le=4096, description="LoRA alpha; the update is scaled by alpha/rank. Default: equal to rank."
    )
    lr: float = Field(default=1e-4, gt=0, le=1, description="Learning rate of the LoRA weights.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = Field(
        default="constant", description="Learning-rate schedule."
    )
    lr_warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS, strict=True, description="Warm-up steps for the schedules that use them.")
    resolution: int = Field(default=1024, ge=64, le=MAX_SIDE, strict=True, description="Training image size in pixels (square).")
    batch_size: int = Field(default=1, gt=0, le=256, strict=True, description="Images per optimizer step.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, strict=True, description="Seed for data order, noise and timesteps: same seed, same run.")
    token: str = Field(default="sks", min_length=1, description="Rare token that comes to mean this person.")
    class_word: str = Field(
        default="person",
        min_length=1,
        description="What the person is ('man', 'woman', 'person'); the prior the token attaches to.",
    )
    train_text_encoder: bool = Field(default=False, description="Also train LoRA on both text encoders.")
    prior_preservation: bool = Field(
        default=False, description="Regularise with class images the base model draws of '{class_word}'."
    )
    num_class_images: int = Field(default=100, gt=0, le=10_000, strict=True, description="Class images for prior preservation.")
    prior_loss_weight: float = Field(default=1.0, ge=0, le=100, description="Weight of the prior-preservation loss.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        default="auto", description="Compute precision: auto = bf16 on CUDA cards that have it, else fp16; fp32 on CPU."
    )
    optimizer: Literal["auto", "adamw8bit", "adamw"] = Field(
        default="auto",
        description="bitsandbytes 8-bit AdamW (a quarter of the optimizer memory, a little slower) or torch AdamW; "
        "auto = torch AdamW unless the run needs the memory (engine.training.memory_plan.choose_plan).",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] | Annotated[float, Field(ge=0, le=1)] = Field(
        default="auto",
        description="Recompute activations in backward, block by block: saves gigabytes, costs up to 2.2x a step "
        "(every block). auto = as few blocks as the run needs to fit the device's free memory (none when it fits "
        "without); on = every block; off = none; a fraction 0-1 = the blocks that free the most memory while "
        "recomputing at most that share of what checkpointing every block does.",
    )
    compile_unet: bool = Field(
        default=False,
        description="torch.compile each of the UNet's transformer blocks (regional compilation; CUDA). Off until "
        "the GPU benchmark measures it faster.",
    )
    channels_last: bool = Field(
        default=False, description="Keep the UNet's convolution weights channels-last. Off until measured faster."
    )
    attention: Literal["auto", "xformers", "sdpa"] = Field(
        default="auto", description="Attention kernel: auto = xformers when installed on CUDA, else PyTorch SDPA."
    )
    cache_latents: bool = Field(default=True, description="Encode every image with the VAE once, before the loop.")
    sample_every: int = Field(default=100, ge=0, le=MAX_STEPS, strict=True, description="Make a sample grid every N steps (0 = never).")
    sample_steps: int = Field(default=25, gt=0, le=1000, strict=True, description="Denoising steps for each sample image.")
    sample_seeds: tuple[Seed, ...] = Field(default=(0, 1), min_length=1, max_length=64, description="Seeds: the grid's columns.")
    validation_prompts: tuple[str, ...] = Field(
        default=DEFAULT_VALIDATION_PROMPTS,
        min_length=1,
        max_length=64,
        description="Prompts: the grid's rows; {token} and {class_word} are filled in.",
    )
    checkpoint_every: int = Field(default=250, ge=0, le=MAX_STEPS, strict=True, description="Save a resumable checkpoint every N steps (0 = never).")
    checkpoints_keep: int = Field(
        default=2, gt=0, le=1000, strict=True,
        description="How many of the newest checkpoints to keep for resuming; every sample step's checkpoint is "
        "kept as well, so the recommended step can be generated from (engine.training.checkpoints.checkpoints_to_delete).",
    )
    resume: bool = Field(default=False, description="Continue from the newest checkpoint in the run directory.")
    force: bool = Field(default=False, description="Overwrite a run directory that already holds a finished run.")
    device: str = Field(default="auto", description="torch device: auto = cuda when available, else cpu.")

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_word_or_fraction(cls, value):
        # Config files and API clients written before 'auto' say true/false: they mean on/off.
        if isinstance(value, bool):
            return "on" if value else "off"
        if value in ("auto", "on", "off"):
            return value
        try:
            fraction = float(value)  # the CLI passes its text; a config file a number
        except (TypeError, ValueError):
            fraction = math.nan
        if not 0 <= fraction <= 1:  # NaN fails this too
            raise ValueError(f"must be auto, on, off or a fraction from 0 to 1, got {value!r}")
        return fraction

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE works on 8x8 blocks), got {value}")
        return value

    @model_validator(mode="after")
    def _token_in_prompts(self) -> TrainConfig:
        # Filled as plain text, never str.format: a format spec or an attribute in a prompt is refused here.
        for prompt in self.validation_prompts:
            try:
                fill(prompt, {"token": self.token, "class_word": self.class_word})
            except LikenessError as error:
                raise ValueError(f"validation prompt {prompt[:80]!r}: {error}") from None
        return self

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    @property
    def instance_prompt(self) -> str:
        return f"a photo of {self.token} {self.class_word}"

    @property
    def class_prompt(self) -> str:
        return f"a photo of {self.class_word}"

    def sample_prompts(self) -> list[str]:
        return [fill(p, {"token": self.token, "class_word": self.class_word}) for p in self.validation_prompts]
