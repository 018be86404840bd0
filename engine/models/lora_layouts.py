"""The key layouts a LoRA file can have: kohya's, which ComfyUI, A1111, Forge and diffusers all read,
and diffusers' own (peft's modules under ``unet.`` / ``text_encoder.``), which only diffusers reads.

Between the two a LoRA is held as its modules: ``"<component>.<module path>" -> (down, up)``, the
component one of unet / text_encoder / text_encoder_2 and the path as diffusers names the module (the
text encoders' with transformers 4's ``text_model.`` level, which every tool expects), with the
update's scale folded into ``up``: each module applies ``up @ down`` at the strength it was trained
at, so alpha = rank in every file written from it.
"""

from __future__ import annotations

import re

from engine.errors import LikenessError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}

# diffusers writes "<module>.lora.down.weight" for the UNet and "<module>.lora_linear_layer.down.weight"
# for text encoders; peft's own "lora_A"/"lora_B" is accepted too.
_LORA_SUFFIX = r"\.(?:lora\.|lora_linear_layer\.|lora_)(?P<which>down|up|A|B)\.weight$"
_DIFFUSERS_KEY = re.compile(r"^(?P<component>unet|text_encoder_2|text_encoder)\.(?P<module>.+?)" + _LORA_SUFFIX)
_KOHYA_KEY = re.compile(r"^(?P<name>lora_(?:unet|te1|te2)_[A-Za-z0-9_]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")

# kohya's names are module paths with every "." turned into "_", so reading one back needs the shape
# of the paths it can hold: the Linear layers of the UNet's attention blocks and of CLIP's layers.
_UNET_BLOCK = re.compile(r"^lora_unet_(?:(?P<kind>input_blocks|output_blocks)_(?P<index>\d+)_1|middle_block_1)_(?P<rest>.+)$")
_TRANSFORMER_PART = re.compile(
    r"^(?:transformer_blocks_(?P<block>\d+)_(?P<inner>attn[12]_to_(?:q|k|v|out_0)|ff_net_0_proj|ff_net_2)"
    r"|(?P<proj>proj_in|proj_out))$")
_TEXT_PART = re.compile(r"^lora_te(?P<which>[12])_text_model_encoder_layers_(?P<layer>\d+)_"
                        r"(?P<part>self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")


def standard_text_encoder_module(module: str) -> str:
    """``encoder.layers.0...`` (transformers 5's CLIPTextModel) -> ``text_model.encoder.layers.0...``."""
    return module if module.startswith("text_model.") else "text_model." + module


def layout_of(keys) -> str:
    """``"kohya"`` or ``"diffusers"``: which layout a LoRA file's tensor names are in."""
    keys = list(keys)
    if keys and all(k.startswith("lora_") for k in keys):
        return "kohya"
    return "diffusers"


# --- diffusers' UNet paths <-> the original (SGM) layout kohya's names use -----------------------

def sgm_unet_module(module: str, layers_per_block: int) -> str:
    """Map a diffusers SDXL UNet module path inside an attention block to the SGM layout.

    Each down level holds ``layers_per_block`` ResBlock + transformer pairs and then a downsampler,
    each up level one pair more and then an upsampler; input_blocks.0 is conv_in. So:
    down_blocks.B.attentions.L -> input_blocks.(1 + B*(lpb+1) + L).1, mid_block.attentions.0 ->
    middle_block.1, up_blocks.B.attentions.L -> output_blocks.(B*(lpb+1) + L).1 ([0] is the ResBlock).
    """
    parts = module.split(".")
    if len(parts) > 4 and parts[0] == "down_blocks" and parts[2] == "attentions":
        index = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["input_blocks", str(index), "1", *parts[4:]])
    if len(parts) > 3 and parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    if len(parts) > 4 and parts[0] == "up_blocks" and parts[2] == "attentions":
        index = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["output_blocks", str(index), "1", *parts[4:]])
    raise LikenessError(f"cannot place LoRA module {module} in the SDXL (kohya) layout")


def kohya_name(key: str, layers_per_block: int) -> str:
    """The kohya name (``lora_unet_input_blocks_4_1_…``, ``lora_te1_text_model_…``) of a module key."""
    component, module = key.split(".", 1)
    path = sgm_unet_module(module, layers_per_block) if component == "unet" else standard_text_encoder_module(module)
    return KOHYA_PREFIXES[component] + path.replace(".", "_")


def diffusers_key(name: str, layers_per_block: int) -> str:
    """The inverse of :func:`kohya_name` for the modules likeness trains (and the rest of the
    attention blocks' and CLIP layers' Linear layers)."""
    if match := _TEXT_PART.match(name):
        component = "text_encoder" if match["which"] == "1" else "text_encoder_2"
        part = match["part"]
        part = ("self_attn." + part.removeprefix("self_attn_")) if part.startswith("self_attn_") else part.replace("_", ".")
        return f"{component}.text_model.encoder.layers.{match['layer']}.{part}"
    block = _UNET_BLOCK.match(name)
    inner = _TRANSFORMER_PART.match(block["rest"]) if block else None
    if not inner:
        raise LikenessError(f"cannot read LoRA module {name}: likeness reads the attention layers of SDXL's UNet "
                            "and text encoders")
    if inner["proj"]:
        rest = inner["proj"]
    else:
        attn = inner["inner"]
        attn = {"ff_net_0_proj": "ff.net.0.proj", "ff_net_2": "ff.net.2"}.get(attn) or (
            attn[:5] + "." + attn[6:].replace("to_out_0", "to_out.0"))
        rest = f"transformer_blocks.{inner['block']}.{attn}"
    if block["kind"] is None:
        return f"unet.mid_block.attentions.0.{rest}"
    index, per_level = int(block["index"]), layers_per_block + 1
    if block["kind"] == "input_blocks":
        level, layer = divmod(index - 1, per_level)
        if layer >= layers_per_block:
            raise LikenessError(f"cannot read LoRA module {name}: input_blocks.{index} is a downsampler")
        return f"unet.down_blocks.{level}.attentions.{layer}.{rest}"
    level, layer = divmod(index, per_level)
    return f"unet.up_blocks.{level}.attentions.{layer}.{rest}"


# --- modules <-> tensors ---------------------------------------------------------------------------

def modules_from_tensors(tensors: dict, alphas: dict[str, float], layers_per_block: int) -> dict:
    """The modules of a LoRA file's tensors, in either layout, the scale folded into ``up``.

    ``alphas`` holds each component's alpha for a diffusers-layout file whose metadata gives one
    (kohya files carry theirs beside each module); without one a module's alpha is its rank, which
    is what likeness's own files hold since the scale is folded in.
    """
    if layout_of(tensors) == "kohya":
        return _modules_from_kohya(tensors, layers_per_block)
    halves: dict[str, dict[str, object]] = {}
    for key, tensor in tensors.items():
        match = _DIFFUSERS_KEY.match(key)
        if not match:
            raise LikenessError(f"unexpected key in LoRA file: {key}")
        module = match["module"] if match["component"] == "unet" else standard_text_encoder_module(match["module"])
        halves.setdefault(f"{match['component']}.{module}", {})[
            "down" if match["which"] in ("A", "down") else "up"] = tensor
    modules = {}
    for key, pair in halves.items():
        down, up = _pair(key, pair)
        alpha = alphas.get(key.split(".", 1)[0])
        modules[key] = (down, _folded(up, alpha, down.shape[0]))
    return modules


def _modules_from_kohya(tensors: dict, layers_per_block: int) -> dict:
    halves: dict[str, dict[str, object]] = {}
    for key, tensor in tensors.items():
        match = _KOHYA_KEY.match(key)
        if not match:
            raise LikenessError(f"unexpected key in LoRA file: {key}")
        halves.setdefault(match["name"], {})[match["part"].split(".")[0].removeprefix("lora_")] = tensor
    modules = {}
    for name, parts in halves.items():
        down, up = _pair(name, parts)
        alpha = float(parts["alpha"]) if "alpha" in parts else None
        modules[diffusers_key(name, layers_per_block)] = (down, _folded(up, alpha, down.shape[0]))
    return modules


def _pair(name: str, parts: dict):
    if "down" not in parts or "up" not in parts:
        missing = "up" if "down" in parts else "down"
        raise LikenessError(f"LoRA module {name} has no {missing} weight")
    return parts["down"], parts["up"]


def _folded(up, alpha: float | None, rank: int):
    # W + (alpha/r)·up·down is stored as W + up'·down with up' = (alpha/r)·up: alpha = r from here on.
    scale = 1.0 if alpha is None else alpha / rank
    return up if scale == 1 else up * scale


def kohya_tensors(modules: dict, layers_per_block: int) -> dict:
    """kohya's tensors for ``modules``: ``NAME.lora_down.weight``, ``NAME.lora_up.weight`` and
    ``NAME.alpha`` = the module's rank (its scale is in the weights), so every tool that reads alpha,
    and every one that ignores it, applies the trained strength."""
    import torch

    out = {}
    for key, (down, up) in modules.items():
        name = kohya_name(key, layers_per_block)
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def diffusers_tensors(modules: dict) -> dict:
    """diffusers' tensors for ``modules``, named as ``save_lora_weights`` names peft's layers
    (``unet.….lora.down.weight``, ``text_encoder.….lora_linear_layer.down.weight``)."""
    out = {}
    for key, (down, up) in modules.items():
        layer = "lora" if key.startswith("unet.") else "lora_linear_layer"
        out[f"{key}.{layer}.down.weight"] = down.contiguous()
        out[f"{key}.{layer}.up.weight"] = up.contiguous()
    return out


def module_ranks(modules: dict) -> list[int]:
    return sorted({int(down.shape[0]) for down, _ in modules.values()})
