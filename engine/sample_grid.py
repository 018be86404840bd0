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


def render_images(pipe, prompts: list[str], seeds: tuple[int, ...], *, resolution: int, steps: int,
                  embeds: list[PromptEmbeds] | None, autocast_dtype=None,
                  on_progress: Callable[[float], None] | None = None) -> list[list[Image.Image]]:
    """One row per prompt, one column per seed. Seeds drive a CPU generator: same image on any device.

    ``on_progress`` hears the fraction of the grid drawn after every denoising step.
    """
    import torch

    images = len(prompts) * len(seeds)

    device = pipe.unet.device
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    rows = []
    for index, prompt in enumerate(prompts):
        row = []
        for seed in seeds:
            kwargs = dict(height=resolution, width=resolution, num_inference_steps=steps,
                          guidance_scale=SAMPLE_GUIDANCE, generator=torch.Generator("cpu").manual_seed(seed))
            if on_progress is not None:
                done = index * len(seeds) + len(row)  # images finished before this one

                def step_end(_pipe, i, _t, callback_kwargs, done=done):
                    on_progress((done + (i + 1) / steps) / images)
                    return callback_kwargs

                kwargs["callback_on_step_end"] = step_end
            if embeds is not None:
                e = embeds[index]
                kwargs.update(
                    prompt_embeds=e.prompt_embeds.to(device, pipe.unet.dtype),
                    pooled_prompt_embeds=e.pooled_prompt_embeds.to(device, pipe.unet.dtype),
                    negative_prompt_embeds=torch.zeros_like(e.prompt_embeds).to(device, pipe.unet.dtype),
                    negative_pooled_prompt_embeds=torch.zeros_like(e.pooled_prompt_embeds).to(device, pipe.unet.dtype),
                )
            else:
                kwargs["prompt"] = prompt
            with torch.no_grad(), autocast:
                row.append(pipe(**kwargs).images[0])
        rows.append(row)
    return rows


def sample_grid(rows: list[list[Image.Image]], prompts: list[str], seeds: tuple[int, ...], step: int,
                cell_labels: list[list[str]] | None = None, run: str | None = None) -> Image.Image:
    """Prompts down, seeds across; the title says which run and step (the prompts and seeds label the cells)."""
    title = f"run {run} · step {step}" if run else f"step {step}"
    return labelled_grid(rows, prompts, [f"seed {s}" for s in seeds], title=title, cell_labels=cell_labels)
