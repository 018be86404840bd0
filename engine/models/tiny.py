"""The built-in ``tiny`` base model: SDXL's architecture at toy size, with random weights.

Tests, the demo and benchmarks need a model with SDXL's exact classes (two CLIP text encoders,
a UNet with ``text_time`` added conditioning, an 8x VAE) but no download. Weights come from fixed
seeds, so every machine builds the same model; it is saved once as an ordinary diffusers folder
that any diffusers code can load by path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when the architecture or the seeds below change, so stale copies are rebuilt.
TINY_MODEL_VERSION = 1
TINY_MODEL_NAME = "tiny"


def _byte_level_vocab() -> dict[str, int]:
    """A character-level CLIP BPE vocabulary: every byte, alone and word-final; no merges.

    A hub download is not an option, and a vocabulary of single bytes tokenises any prompt
    without unknown tokens.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def _build(target: Path) -> None:
    from engine.quiet import quiet_libraries

    quiet_libraries()  # the first --dry-run builds the model: its output is ours, not the libraries' notices
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab = _byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    # SDXL's second tokenizer pads with "!", as in the real model.
    tokenizer_2 = CLIPTokenizer(vocab=dict(vocab), merges=[], model_max_length=77, pad_token="!")

    text_config = dict(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        max_position_embeddings=77,
        vocab_size=len(vocab),
        hidden_act="gelu",
        projection_dim=32,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))

    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text (32) + six time ids
        cross_attention_dim=64,  # both encoders' hidden states side by side (32 + 32)
        norm_num_groups=8,
    )
    torch.manual_seed(3)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),  # four blocks: 8x down-sampling, like SDXL's VAE
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.13025,  # SDXL's VAE scaling factor
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    (target / "likeness-tiny.json").write_text(json.dumps({"version": TINY_MODEL_VERSION}))


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return the tiny model's folder under ``models_dir``, building it first if needed."""
    target = models_dir / f"tiny-sdxl-v{TINY_MODEL_VERSION}"
    if (target / "likeness-tiny.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: two processes building at once both succeed, and an
    # interrupted build never leaves a half model that looks finished.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=models_dir))
    try:
        _build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "likeness-tiny.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
