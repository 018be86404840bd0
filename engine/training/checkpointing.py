"""Gradient checkpointing by block: recompute in backward only the blocks the memory plan names.

diffusers checkpoints all of a UNet or none of it. Here the unit is a block, named by its path in the
model, and any subset can be checkpointed:

    down_blocks.1.resnets.0        a ResnetBlock2D: checkpointed whole
    up_blocks.0.attentions.2       a Transformer2DModel: each of its transformer layers checkpointed alone,
                                   as diffusers does, so backward recomputes one layer at a time
    text_encoder_2.layers.31       one CLIP encoder layer, when the text encoders train

Checkpointing every block is exactly diffusers' ``enable_gradient_checkpointing()`` (the same resnets and
transformer layers recomputed); ``engine.training.memory_plan`` chooses which blocks, from the per-block
table ``engine/training/data/sdxl_checkpoint_blocks.json``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# The UNet's checkpointable blocks: the resnets and the attention (transformer) blocks of each stage.
_UNET_BLOCK = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.(resnets|attentions)\.\d+$")
# CLIPTextModel holds its layers at encoder.layers, CLIPTextModelWithProjection at text_model.encoder.layers.
_TEXT_LAYER = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)$")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def unet_blocks(unet) -> dict:
    """The UNet's checkpointable blocks by name, in the order the forward runs them."""
    blocks = {name: module for name, module in unet.named_modules() if _UNET_BLOCK.match(name)}
    return dict(sorted(blocks.items(), key=lambda item: _forward_order(item[0])))


def text_encoder_layers(encoder, prefix: str) -> dict:
    """One text encoder's layers by name (``prefix.layers.N``)."""
    return {f"{prefix}.layers.{match.group(1)}": module for name, module in encoder.named_modules()
            if (match := _TEXT_LAYER.match(name))}


def _forward_order(name: str) -> tuple:
    stage, index = name.split(".")[0], [int(part) for part in re.findall(r"\d+", name)]
    # Within a stage diffusers runs resnet j, then attention j.
    rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[stage]
    mid_index = [0] if stage == "mid_block" else []
    return (rank, *mid_index, *index, 0 if ".resnets." in name else 1)


def checkpoint_blocks(blocks: dict, names: Iterable[str], recompute: Callable | None = None) -> list[str]:
    """Make backward recompute each of ``names`` (keys of ``blocks``) instead of keeping its activations.

    ``recompute(function, *args, **kwargs)`` runs a block checkpointed, as diffusers'
    ``_gradient_checkpointing_func`` does; default: torch's non-reentrant checkpoint. The full-size
    simulator passes its own, which counts the recomputation too. Returns the names checkpointed. An
    unknown name is an error: a plan made for another model's blocks must not pass silently as
    checkpointing nothing.
    """
    chosen = list(names)
    unknown = [name for name in chosen if name not in blocks]
    if unknown:
        raise ValueError(f"no such block to checkpoint: {', '.join(unknown[:5])}")
    for name in chosen:
        block = blocks[name]
        # A transformer block's layers are recomputed one by one: backward then holds one layer's
        # activations at a time, not the ten of an SDXL 1280-channel block.
        layers = getattr(block, "transformer_blocks", None)
        for unit in (layers if layers is not None else [block]):
            _recompute_in_backward(unit, recompute or _torch_checkpoint)
    return chosen


def _torch_checkpoint(function, *args, **kwargs):
    import torch.utils.checkpoint

    # Non-reentrant: it takes keyword arguments, and recomputes under the autocast state it saw.
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)


def _recompute_in_backward(module, recompute: Callable) -> None:
    import torch

    if getattr(module, "_likeness_checkpointed", False):
        return
    forward = module.forward

    def checkpointed_forward(*args, **kwargs):
        # Only where gradients are recorded: sampling and cached prompts (no_grad) run the plain forward.
        # Not tied to train mode: the text encoders train in eval mode (no dropout either way).
        if torch.is_grad_enabled():
            return recompute(forward, *args, **kwargs)
        return forward(*args, **kwargs)

    module.forward = checkpointed_forward
    module._likeness_checkpointed = True
