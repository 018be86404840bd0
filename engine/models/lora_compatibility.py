"""Would this LoRA load, every module of it, into full-size SDXL base 1.0 in ComfyUI, A1111 and kohya?

SDXL's UNet and both text encoders are built from their configs on torch's meta device (module
names and weight shapes, no weights, no download: a second or two), and each tool's naming rule
turns them into the LoRA module names that tool maps:

- **kohya** (sd-scripts' networks/lora.py): ``lora_unet_`` + the module's path in the original (SGM)
  UNet, ``lora_te1_`` / ``lora_te2_`` + its path in transformers' CLIP, dots turned into underscores;
  it adapts the Linear layers of the UNet's transformer blocks and of CLIP's attention and MLP.
- **ComfyUI** (comfy/lora.py): ``lora_unet_`` + any weight's SGM path (or its diffusers path), and for
  each CLIP layer only ``self_attn_{q,k,v,out}_proj`` and ``mlp_fc{1,2}``; anything else is
  "lora key not loaded".
- **A1111** (extensions-builtin/Lora/networks.py): ``lora_unet_X`` looked up as the SGM module
  ``diffusion_model_X``, ``lora_te1_…`` as transformers' CLIP, and ``lora_te2_…`` converted to
  OpenCLIP's names (q/k/v into the fused ``attn``, ``out_proj``, ``mlp_c_fc``, ``mlp_c_proj``).

A diffusers-layout file is checked against diffusers' own module paths. The check fails loudly, in
one line, on any module a tool would skip or whose shape does not fit the layer it names.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import LikenessError
from engine.models.lora_layouts import KOHYA_PREFIXES, layout_of, sgm_unet_module
from engine.models.lora_validation import validate_lora

# stabilityai/stable-diffusion-xl-base-1.0's unet/config.json: the fields that shape its modules.
SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
# Its text_encoder (CLIP ViT-L/14) and text_encoder_2 (OpenCLIP ViT-bigG/14) configs.
SDXL_TEXT_ENCODER_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77,
                                vocab_size=49408)
SDXL_TEXT_ENCODER_2_CONFIG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                                  num_hidden_layers=32, projection_dim=1280, hidden_act="gelu",
                                  max_position_embeddings=77, vocab_size=49408)

# ComfyUI's and A1111's CLIP modules, in kohya's underscored form; A1111's OpenCLIP name for each.
_CLIP_LAYER_MODULES = {"self_attn_q_proj": "attn", "self_attn_k_proj": "attn", "self_attn_v_proj": "attn",
                       "self_attn_out_proj": "attn_out_proj", "mlp_fc1": "mlp_c_fc", "mlp_fc2": "mlp_c_proj"}
_KOHYA_MODULE = re.compile(r"^(?P<name>lora_(?:unet|te1|te2)_[A-Za-z0-9_]+)\.(?:lora_down\.weight|lora_up\.weight|alpha)$")
_DIFFUSERS_MODULE = re.compile(r"^(?P<name>(?:unet|text_encoder_2|text_encoder)\..+?)"
                               r"\.(?:lora\.|lora_linear_layer\.|lora_)(?:down|up|A|B)\.weight$")


@dataclass(frozen=True)
class SdxlModules:
    """Full-size SDXL base 1.0's modules that have a weight: diffusers path -> weight shape."""

    unet: dict[str, tuple[int, ...]]
    text_encoder: dict[str, tuple[int, ...]]
    text_encoder_2: dict[str, tuple[int, ...]]
    layers_per_block: int = 2

    def component(self, name: str) -> dict[str, tuple[int, ...]]:
        return getattr(self, name)


@functools.cache
def sdxl_base_modules() -> SdxlModules:
    """Build SDXL base 1.0's UNet and text encoders on the meta device and list their modules."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def weights(model, text: bool) -> dict[str, tuple[int, ...]]:
        out = {}
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and name:
                # transformers 5's CLIP has no text_model level; every tool's names have it.
                if text and name.startswith(("encoder.", "embeddings.", "final_layer_norm")):
                    name = "text_model." + name
                out[name] = tuple(weight.shape)
        return out

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        te1 = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER_CONFIG))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2_CONFIG))
    return SdxlModules(weights(unet, False), weights(te1, True), weights(te2, True),
                       SDXL_UNET_CONFIG["layers_per_block"])


def _in_attention_block(path: str) -> bool:
    parts = path.split(".")
    return (parts[0] in ("down_blocks", "up_blocks") and len(parts) > 4 and parts[2] == "attentions") or (
        parts[0] == "mid_block" and len(parts) > 3 and parts[1] == "attentions")


def _sgm_names(sdxl: SdxlModules) -> dict[str, str]:
    """The underscored SGM path of each UNet module in an attention block -> its diffusers path."""
    return {sgm_unet_module(p, sdxl.layers_per_block).replace(".", "_"): p
            for p in sdxl.unet if _in_attention_block(p)}


def kohya_names(sdxl: SdxlModules) -> dict[str, str]:
    """LoRA module name -> ``component.path`` for every module kohya's SDXL LoRA adapts."""
    names = {f"lora_unet_{sgm}": f"unet.{p}" for sgm, p in _sgm_names(sdxl).items()
             if len(sdxl.unet[p]) in (2, 4) and (".transformer_blocks." in p or p.endswith(("proj_in", "proj_out")))}
    for component in ("text_encoder", "text_encoder_2"):
        for path, shape in sdxl.component(component).items():
            if ".encoder.layers." in path and (".self_attn." in path or ".mlp." in path) and len(shape) == 2:
                names[KOHYA_PREFIXES[component] + path.replace(".", "_")] = f"{component}.{path}"
    return names


def comfyui_names(sdxl: SdxlModules) -> dict[str, str]:
    """LoRA module name -> ``component.path`` for every name ComfyUI maps onto SDXL."""
    names = {f"lora_unet_{sgm}": f"unet.{p}" for sgm, p in _sgm_names(sdxl).items()}
    names.update({"lora_unet_" + p.replace(".", "_"): f"unet.{p}" for p in sdxl.unet})  # its diffusers aliases
    names.update(_clip_layer_names(sdxl))
    return names


def a1111_names(sdxl: SdxlModules) -> dict[str, str]:
    """LoRA module name -> ``component.path`` for every name A1111 maps onto SDXL."""
    names = {f"lora_unet_{sgm}": f"unet.{p}" for sgm, p in _sgm_names(sdxl).items()}
    names.update({"lora_te1_" + p.replace(".", "_"): f"text_encoder.{p}" for p in sdxl.text_encoder})
    # lora_te2_ names are converted to OpenCLIP's, which has a module only for these.
    names.update({n: p for n, p in _clip_layer_names(sdxl).items() if n.startswith("lora_te2_")})
    return names


def _clip_layer_names(sdxl: SdxlModules) -> dict[str, str]:
    names = {}
    for component in ("text_encoder", "text_encoder_2"):
        modules = sdxl.component(component)
        for path in modules:
            match = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", path)
            if match and match[2].replace(".", "_") in _CLIP_LAYER_MODULES:
                names[f"{KOHYA_PREFIXES[component]}text_model_encoder_layers_{match[1]}_{match[2].replace('.', '_')}"] = (
                    f"{component}.{path}")
    return names


@dataclass
class CompatibilityReport:
    """How many of a LoRA file's modules each tool maps onto full-size SDXL base 1.0."""

    path: Path
    modules: int
    matched: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    misfits: list[str] = field(default_factory=list)
    shapes_checked: bool = True

    @property
    def ok(self) -> bool:
        return not any(self.unmatched.values()) and not self.misfits

    def summary(self) -> str:
        tools = ", ".join(self.matched)
        counts = sorted(set(self.matched.values()))
        mapped = f"{counts[0]}" if len(counts) == 1 else "/".join(str(self.matched[t]) for t in self.matched)
        shapes = ("every shape fits" if self.shapes_checked
                  else "shapes not checked: the run's base is not full-size SDXL")
        return f"check: {mapped} of {self.modules} LoRA modules map to SDXL base 1.0 in {tools} naming ({shapes})"


def check_lora_compatibility(path: Path, check_shapes: bool = True) -> CompatibilityReport:
    """Map every LoRA module of ``path`` onto full-size SDXL base 1.0 by each tool's naming rule;
    raise :class:`LikenessError` naming the first module a tool would skip, or that does not fit."""
    report = compatibility(path, check_shapes)
    for tool, missing in report.unmatched.items():
        if missing:
            raise LikenessError(f"{path}: {len(missing)} of {report.modules} LoRA modules do not map to SDXL base 1.0 "
                                f"in {tool}'s naming, so {tool} would skip them (e.g. {missing[0]})")
    if report.misfits:
        raise LikenessError(f"{path}: {len(report.misfits)} LoRA modules do not fit SDXL base 1.0's layers "
                            f"(e.g. {report.misfits[0]})")
    return report


def compatibility(path: Path, check_shapes: bool = True) -> CompatibilityReport:
    """The :class:`CompatibilityReport` of ``path``, without raising."""
    header = validate_lora(path)
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    sdxl = sdxl_base_modules()
    kohya = layout_of(shapes) == "kohya"
    pattern = _KOHYA_MODULE if kohya else _DIFFUSERS_MODULE
    halves: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        match = pattern.match(key)
        name = match["name"] if match else key
        half = "down" if re.search(r"(?:lora_down|\.down|lora_A)\.weight$", key) else (
            "up" if key.endswith("weight") else "alpha")
        halves.setdefault(name, {})[half] = shape
    if kohya:
        tables = {"kohya": kohya_names(sdxl), "A1111": a1111_names(sdxl), "ComfyUI": comfyui_names(sdxl)}
    else:
        tables = {"diffusers": {f"{c}.{p}": f"{c}.{p}" for c in ("unet", "text_encoder", "text_encoder_2")
                                for p in sdxl.component(c)}}
    report = CompatibilityReport(path, len(halves), shapes_checked=check_shapes)
    for tool, table in tables.items():
        report.matched[tool] = sum(1 for name in halves if name in table)
        report.unmatched[tool] = sorted(name for name in halves if name not in table)
    if check_shapes:
        known = {name: target for table in tables.values() for name, target in table.items()}
        for name, parts in sorted(halves.items()):
            if name not in known or "down" not in parts or "up" not in parts:
                continue
            component, module = known[name].split(".", 1)
            layer = sdxl.component(component)[module]
            down, up = parts["down"], parts["up"]
            if (up[0], down[1]) != tuple(layer[:2]):
                report.misfits.append(f"{name}: down {down} and up {up} against a layer of {list(layer)}")
    return report
