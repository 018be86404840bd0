"""LoRA weights on disk: diffusers' format for our runs, kohya's for ComfyUI / A1111 / Forge.

Our files are what ``StableDiffusionXLPipeline.save_lora_weights`` writes, with the rank and alpha
kept in the safetensors metadata so any loader scales the update correctly.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.errors import LikenessError

LORA_FILENAME = "lora.safetensors"

# peft target modules: the attention projections, as diffusers' DreamBooth-LoRA script does.
UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]


def adapter_metadata(rank: int, alpha: float, target_modules: list[str]) -> dict:
    return {"r": rank, "lora_alpha": alpha, "target_modules": target_modules, "init_lora_weights": "gaussian"}


def save_lora(directory: Path, unet, text_encoder=None, text_encoder_2=None, *, rank: int, alpha: float) -> Path:
    """Write the LoRA layers of the given (peft-wrapped) models to ``directory/lora.safetensors``."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model)) if model is not None else None

    te_meta = adapter_metadata(rank, alpha, TEXT_ENCODER_TARGET_MODULES) if text_encoder is not None else None
    StableDiffusionXLPipeline.save_lora_weights(
        save_directory=str(directory),
        unet_lora_layers=layers(unet),
        text_encoder_lora_layers=layers(text_encoder),
        text_encoder_2_lora_layers=layers(text_encoder_2),
        unet_lora_adapter_metadata=adapter_metadata(rank, alpha, UNET_TARGET_MODULES),
        text_encoder_lora_adapter_metadata=te_meta,
        text_encoder_2_lora_adapter_metadata=te_meta,
        weight_name=LORA_FILENAME,
        safe_serialization=True,
    )
    return directory / LORA_FILENAME


def load_lora_into_training_models(path: Path, unet, text_encoder=None, text_encoder_2=None) -> None:
    """Put weights saved by :func:`save_lora` back into peft-wrapped training models (for resume)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.training_utils import _set_state_dict_into_text_encoder
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state_dict, _ = StableDiffusionXLPipeline.lora_state_dict(str(path))
    unet_state = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
    if result.unexpected_keys:
        raise LikenessError(f"checkpoint {path} does not match this model: {result.unexpected_keys[0]}")
    if text_encoder is not None:
        _set_state_dict_into_text_encoder(state_dict, prefix="text_encoder.", text_encoder=text_encoder)
    if text_encoder_2 is not None:
        _set_state_dict_into_text_encoder(state_dict, prefix="text_encoder_2.", text_encoder=text_encoder_2)


# --- kohya export --------------------------------------------------------------------------------

# diffusers writes "<module>.lora.down.weight" for the UNet and "<module>.lora_linear_layer.down.weight"
# for text encoders; peft's own "lora_A"/"lora_B" is accepted too.
_LORA_SUFFIX = r"\.(?:lora\.|lora_linear_layer\.|lora_)(?P<which>down|up|A|B)\.weight$"
_UNET_KEY = re.compile(r"^unet\.(?P<module>.+?)" + _LORA_SUFFIX)
_TE_KEY = re.compile(r"^(?P<encoder>text_encoder_2|text_encoder)\.(?P<module>.+?)" + _LORA_SUFFIX)


def _sgm_unet_module(module: str, layers_per_block: int) -> str:
    """Map a diffusers SDXL UNet module path to the original (SGM) layout kohya files use.

    down_blocks.B.attentions.L -> input_blocks.(1 + B*(lpb+1) + L).1
    mid_block.attentions.0     -> middle_block.1
    up_blocks.B.attentions.L   -> output_blocks.(B*(lpb+2-1) + L).1
    """
    parts = module.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        index = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["input_blocks", str(index), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        index = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["output_blocks", str(index), "1", *parts[4:]])
    raise LikenessError(f"cannot place LoRA module {module} in the SDXL (kohya) layout")


def to_kohya(state_dict: dict, alphas: dict[str, float], layers_per_block: int) -> dict:
    """Convert a diffusers-format SDXL LoRA state dict to kohya's keys (lora_unet_*, lora_te1_*, lora_te2_*)."""
    import torch

    out = {}
    for key, tensor in state_dict.items():
        if match := _UNET_KEY.match(key):
            name = "lora_unet_" + _sgm_unet_module(match["module"], layers_per_block).replace(".", "_")
            alpha = alphas["unet"]
        elif match := _TE_KEY.match(key):
            prefix = "lora_te2_" if match["encoder"] == "text_encoder_2" else "lora_te1_"
            name = prefix + match["module"].replace(".", "_")
            alpha = alphas[match["encoder"]]
        else:
            raise LikenessError(f"unexpected key in LoRA file: {key}")
        kind = "lora_down" if match["which"] in ("A", "down") else "lora_up"
        out[f"{name}.{kind}.weight"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def export_kohya(lora_path: Path, dest: Path, layers_per_block: int = 2) -> Path:
    """Write ``lora_path`` (ours, diffusers format) as a kohya-style file that ComfyUI, A1111 and Forge load."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    # diffusers flattens the per-component adapter configs to "unet.r", "text_encoder.lora_alpha", ...
    flat = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    alphas = {component: float(flat[f"{component}.lora_alpha"])
              for component in ("unet", "text_encoder", "text_encoder_2") if f"{component}.lora_alpha" in flat}
    if "unet" not in alphas:
        raise LikenessError(f"{lora_path} has no rank/alpha metadata: export works on LoRAs that likeness trained")
    kohya = to_kohya(state_dict, alphas, layers_per_block)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, str(dest), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0",
                                          "ss_network_dim": str(flat["unet.r"]),
                                          "ss_network_alpha": str(alphas["unet"])})
    return dest
