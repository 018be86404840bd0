"""Prior preservation's class images: what the base model draws for 'a photo of {class_word}'.

They depend only on the base model, the prompt, the size and the sampler, so they are drawn once
and cached under the likeness home for every later run that asks for the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from engine.events import Log
from engine.settings import Settings
from engine.training.config import TrainConfig
from engine.training.sample_grid import SAMPLE_GUIDANCE, PromptEmbeds


def _folder(trainer, config: TrainConfig, settings: Settings) -> Path:
    key = json.dumps([trainer.base.location, config.class_prompt, config.resolution, config.sample_steps,
                      SAMPLE_GUIDANCE])
    return settings.class_images_dir / hashlib.sha256(key.encode()).hexdigest()[:16]


def cached_class_images(trainer, config: TrainConfig, settings: Settings) -> Path | None:
    """The folder of class images when every one is already drawn, else None."""
    folder = _folder(trainer, config, settings)
    return folder if folder.is_dir() and len(list(folder.glob("*.png"))) >= config.num_class_images else None


def ensure_class_images(trainer, config: TrainConfig, settings: Settings, embeds: PromptEmbeds) -> Path:
    """Return a folder of ``config.num_class_images`` class images, drawing any that are missing.

    Drawn as the sample grids are: from the class prompt's ``embeds`` (the text encoders need not be on
    the device), the UNet in the run's autocast, and the fp32 VAE decoding the latents in the plan's
    tiles. So the drawing holds no more than a grid does, and half-precision latents never meet the
    fp32 VAE (the convolution refuses the mix on CUDA).
    """
    from engine.training.sample_grid import decode_latents, render_images

    cached = cached_class_images(trainer, config, settings)
    if cached is not None:
        return cached
    folder = _folder(trainer, config, settings)
    trainer.on_event(Log(f"drawing {config.num_class_images} class images of '{config.class_prompt}' (once)"))
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pipe = trainer.sampling_pipeline(frozen_text=True)
    pipe.set_progress_bar_config(disable=True)
    autocast_dtype = trainer.weight_dtype if trainer.placement.is_cuda else None
    trainer.unet.disable_adapters()
    try:
        for index in range(config.num_class_images):
            # Seeded by index, one at a time: the same images whichever run draws them first.
            image = render_images(pipe, [config.class_prompt], (index,), resolution=config.resolution,
                                  steps=config.sample_steps, embeds=[embeds], autocast_dtype=autocast_dtype,
                                  decode=lambda latents: decode_latents(trainer.vae, latents,
                                                                        trainer.plan.decode_tile_px))[0][0]
            image.save(staging / f"{index:04d}.png")
    finally:
        trainer.unet.enable_adapters()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder
