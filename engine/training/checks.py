"""What a training run can be refused for in a second: before it is placed, prepped or loaded.

The CLI calls :func:`check_train_inputs` before deciding where a run goes (a mistyped --base must not
turn into a Modal error), and the trainer calls it again before creating its run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import LikenessError
from engine.models.base_model import BaseModelSource, check_base_available, resolve_base
from engine.models.device import Placement
from engine.outputs import check_output_path
from engine.settings import Settings
from engine.training.config import TrainConfig
from engine.training.images import image_folder, list_image_files
from engine.training.memory_plan import MemoryPlan, estimate_phases

# SDXL's narrowest adapted layers, for a base whose config cannot be read before loading (a single
# file, a hub model not cached yet): the UNet's attention at 640 channels (its first level has
# none), and the text encoders' 768 (CLIP ViT-L) and 1280 (OpenCLIP bigG).
_SDXL_WIDTHS = {"UNet": 640, "text encoder": 768}


def check_train_inputs(config: TrainConfig, settings: Settings, in_the_cloud: bool = False) -> BaseModelSource:
    """Data, output folder, base and rank: everything checkable without loading; nothing is created.

    ``in_the_cloud``: the run was asked to go to Modal, which downloads a hub base itself.
    """
    list_image_files(image_folder(config.data))
    if config.out.exists() and not config.out.is_dir():
        raise LikenessError(f"--out {config.out} is a file, not a folder")
    base = resolve_base(config.base, settings)
    base_folder = Path(base.location) if base.kind in ("folder", "tiny") else None
    check_output_path(config.out, "--out", [("--data", config.data), ("--base", base_folder)])
    check_base_available(base, in_the_cloud)
    check_rank(config, base)
    return base


def adapted_layer_widths(base: BaseModelSource, train_text_encoder: bool) -> dict[str, int]:
    """The narrowest layer the LoRA adapts, per model: a LoRA's rank can be no larger."""
    widths = {}
    unet = _read_config(base, "unet/config.json")
    if unet is not None:
        channels = unet["block_out_channels"]
        attention = [channels[i] for i, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind]
        # to_q/to_k/to_v/to_out of every attention block, and attn2's to_k/to_v read the text states.
        widths["UNet"] = min([*attention, unet.get("cross_attention_dim") or min(attention or channels)])
    if train_text_encoder:
        sizes = [c["hidden_size"] for c in (_read_config(base, f"{name}/config.json")
                                             for name in ("text_encoder", "text_encoder_2")) if c is not None]
        if sizes:
            widths["text encoder"] = min(sizes)
    if base.kind in ("single_file", "hub"):
        for model, width in _SDXL_WIDTHS.items():
            if model == "UNet" or train_text_encoder:
                widths.setdefault(model, width)
    return widths


def check_rank(config: TrainConfig, base: BaseModelSource) -> None:
    """A rank above the narrowest adapted layer adds nothing but memory (100 000 on the tiny model
    grew to 20 GB): refuse it in one line."""
    widths = adapted_layer_widths(base, config.train_text_encoder)
    if not widths:
        return
    model, width = min(widths.items(), key=lambda item: item[1])
    if config.rank > width:
        raise LikenessError(f"--rank {config.rank} is more than the {width} channels of the narrowest layer it "
                            f"adapts in {base.spec}'s {model}: use --rank {width} or less")


def check_fits_in_ram(config: TrainConfig, plan: MemoryPlan, placement: Placement, free_gib: float | None) -> None:
    """On the CPU the whole run lives in RAM: refuse one whose estimate, with ``plan``'s savers, is more
    than is free."""
    if placement.is_cuda or free_gib is None:
        return
    needed = estimate_phases(config, plan, on_cpu=True).required_gib
    if needed > free_gib:
        raise LikenessError(f"this run needs about {needed:.1f} GiB of RAM on the CPU and {free_gib:.1f} GiB is free: "
                            "lower --resolution or --batch-size, or train on a GPU (--where modal)")


def _read_config(base: BaseModelSource, relative: str) -> dict | None:
    if base.kind in ("folder", "tiny"):
        path = Path(base.location) / relative
    elif base.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base.location, relative)
        path = Path(cached) if isinstance(cached, str) else None
    else:
        path = None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
