"""Sample grids during training: fixed prompts (rows) x fixed seeds (columns) at a given step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from engine.grid import labelled_grid

SAMPLE_GUIDANCE = 5.0


@dataclass(frozen=True)
class PromptEmbeds:
    """A prompt already run through both text encoders (kept so the encoders can leave the GPU)."""

    prompt_embeds: object
    pooled_prompt_embeds: object


def decode_latents(vae, latents, tile_px: int | None) -> Image.Image:
    """One image from SDXL latents, as diffusers' pipeline decodes them, but in ``tile_px`` tiles where
    the image is larger: the decoder's full-size activations are what made sampling the peak."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    config = vae.config
    latents = latents.to(vae.device, vae.dtype)
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    tiled = tile_px is not None and latents.shape[-1] * 8 > tile_px
    if tiled:
        # diffusers tiles SDXL's VAE only above its sample_size (1024 px): set the tile size ourselves.
        saved = vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, tile_px, tile_px // 8
    try:
        with torch.no_grad():
            image = vae.decode(latents, return_dict=False)[0]
    finally:
        if tiled:
            vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved
    return VaeImageProcessor(vae_scale_factor=8).postprocess(image, output_type="pil")[0]


def render_images(pipe, prompts: list[str], seeds: tuple[int, ...], *, resolution: int, steps: int,
                  embeds: list[PromptEmbeds] | None, autocast_dtype=None, decode=None,
                  on_progress: Callable[[float], None] | None = None, batch: int = 1) -> list[list[Image.Image]]:
    """One row per prompt, one column per seed. Seeds drive a CPU generator: same image on any device.

    ``batch`` images are denoised per pipeline call (the plan's ``sample_batch``): one image at a time
    leaves a big GPU waiting on kernel launches. Each image keeps its own generator, so its starting
    noise is the one it would get alone.
    ``decode(latents)``, when given, turns one image's denoised latents into the image instead of the
    pipeline (one at a time: the decode's activations are what tiles keep small).
    ``on_progress`` hears the fraction of the grid drawn after every denoising step.
    """
    import torch

    # The grid's cells in reading order, drawn ``batch`` at a time.
    cells = [(index, seed) for index in range(len(prompts)) for seed in seeds]
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    def autocast():
        # A fresh context each batch: the full-size simulator's autocast, like most context managers, is single-use.
        return (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())

    drawn: list[Image.Image] = []
    for start in range(0, len(cells), batch):
        chunk = cells[start:start + batch]
        size = len(chunk)
        # diffusers draws each image's noise from its own generator when given a list of them.
        kwargs = dict(height=resolution, width=resolution, num_inference_steps=steps,
                      guidance_scale=SAMPLE_GUIDANCE,
                      generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in chunk])
        if on_progress is not None:
            def step_end(_pipe, i, _t, callback_kwargs, done=start, size=size):
                on_progress((done + size * (i + 1) / steps) / len(cells))
                return callback_kwargs

            kwargs["callback_on_step_end"] = step_end
        if embeds is not None:
            prompt_embeds = torch.cat([embeds[index].prompt_embeds for index, _ in chunk]).to(device, dtype)
            pooled = torch.cat([embeds[index].pooled_prompt_embeds for index, _ in chunk]).to(device, dtype)
            kwargs.update(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled,
                          negative_prompt_embeds=torch.zeros_like(prompt_embeds),
                          negative_pooled_prompt_embeds=torch.zeros_like(pooled))
        else:
            kwargs["prompt"] = [prompts[index] for index, _ in chunk]
        if decode is not None:
            kwargs["output_type"] = "latent"
        with torch.no_grad(), autocast():
            output = pipe(**kwargs).images
        # The decode runs outside autocast: the VAE stays in its own (fp32) precision.
        drawn += ([decode(output[k:k + 1]) for k in range(size)] if decode is not None
                  else list(output))
    return [drawn[row * len(seeds):(row + 1) * len(seeds)] for row in range(len(prompts))]


def sample_grid(rows: list[list[Image.Image]], prompts: list[str], seeds: tuple[int, ...], step: int,
                cell_labels: list[list[str]] | None = None, run: str | None = None) -> Image.Image:
    """Prompts down, seeds across; the title says which run and step (the prompts and seeds label the cells)."""
    title = f"run {run} · step {step}" if run else f"step {step}"
    return labelled_grid(rows, prompts, [f"seed {s}" for s in seeds], title=title, cell_labels=cell_labels)
