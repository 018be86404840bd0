"""LoRA weights on disk: diffusers' format for our runs, kohya's for ComfyUI / A1111 / Forge.

Our files hold what ``StableDiffusionXLPipeline.load_lora_weights`` reads, written so that any loader
draws the same picture from them:

- standard module names whatever the installed transformers calls its modules (transformers 5's
  ``CLIPTextModel`` has no ``text_model`` level, but every loader expects it);
- the update's scale (alpha / rank) folded into the up weights, and alpha = rank in the metadata, so a
  loader that ignores the metadata (or a file stripped of it) still applies the update at full size;
- one byte layout for the same tensors (sorted header keys), so same-seed runs give byte-identical
  files and whole-file hashes (A1111's AutoV2, civitai's) match.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from engine.errors import LikenessError

LORA_FILENAME = "lora.safetensors"
# Beside a checkpoint's LoRA: the trainable weights exactly as peft holds them (the scale not folded
# in), so a resumed run continues from bit-identical weights whatever alpha / rank is.
TRAINING_STATE_FILENAME = "lora-training-state.safetensors"

# peft target modules: the attention projections, as diffusers' DreamBooth-LoRA script does.
UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def adapter_metadata(rank: int, alpha: float, target_modules: list[str]) -> dict:
    return {"r": rank, "lora_alpha": alpha, "target_modules": target_modules, "init_lora_weights": "gaussian"}


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A .safetensors file whose bytes depend only on the tensors and metadata.

    safetensors keeps the metadata in a hash map whose order changes from process to process; the
    header is re-written here with sorted keys and no spaces (the tensor data and its offsets are
    untouched, so any safetensors reader reads it as before).
    """
    from safetensors.torch import save

    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    return len(header).to_bytes(8, "little") + header + raw[8 + size:]


def write_file_atomically(dest: Path, data: bytes) -> None:
    """Write ``data`` beside ``dest`` and rename it into place: a failure never leaves half a file."""
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, dest)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise LikenessError(f"cannot write {dest}: {error.strerror or error}") from None


def read_lora(path: Path) -> tuple[dict, dict[str, str]]:
    """The tensors and metadata of a LoRA file, or one line saying why it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"{path} is not a readable .safetensors LoRA: {reason}") from None


def check_lora_file(path: Path) -> None:
    """Fail in one line, before anything heavy loads, when ``path`` is not a readable .safetensors file.

    Only the header is read (safetensors checks it against the file size), and torch is not imported.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"{path} is not a readable .safetensors LoRA: {reason}") from None
    if not keys:
        raise LikenessError(f"{path} holds no LoRA weights")


def lora_hashes(path: Path) -> dict[str, str]:
    """The hashes tools identify a LoRA file by: sha256 of the whole file (AutoV2), and of its
    tensor data after the header (A1111's and civitai's AutoV3 for .safetensors, which survives
    metadata edits)."""
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    return {"sha256": hashlib.sha256(data).hexdigest(), "autov3": hashlib.sha256(data[header:]).hexdigest()}


def _standard_text_encoder_key(key: str) -> str:
    """``encoder.layers.0...`` (transformers 5's CLIPTextModel) -> ``text_model.encoder.layers.0...``."""
    return key if key.startswith("text_model.") else "text_model." + key


def save_lora(directory: Path, unet, text_encoder=None, text_encoder_2=None, *, rank: int, alpha: float) -> Path:
    """Write the LoRA layers of the given (peft-wrapped) models to ``directory/lora.safetensors``."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    scale = alpha / rank
    tensors, flat = {}, {}
    for component, model in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        if model is None:
            continue
        targets = UNET_TARGET_MODULES if component == "unet" else TEXT_ENCODER_TARGET_MODULES
        for key, tensor in convert_state_dict_to_diffusers(get_peft_model_state_dict(model)).items():
            if component != "unet":
                key = _standard_text_encoder_key(key)
            # W + (alpha/r)·up·down, stored as W + up'·down with up' = (alpha/r)·up: alpha = r from here on.
            is_up = ".up." in key or "lora_B" in key
            tensors[f"{component}.{key}"] = (tensor * scale if is_up and scale != 1 else tensor).detach().cpu()
        # diffusers' own metadata layout ("unet.r", "text_encoder.lora_alpha", ...), as save_lora_weights writes it.
        flat.update({f"{component}.{k}": v for k, v in adapter_metadata(rank, float(rank), targets).items()})
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(flat, sort_keys=True)}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LORA_FILENAME
    write_file_atomically(path, safetensors_bytes(tensors, metadata))
    return path


def save_training_state(directory: Path, models: dict) -> Path:
    """The trainable LoRA weights as peft holds them, for an exact resume."""
    from peft.utils import get_peft_model_state_dict

    tensors = {f"{name}.{key}": tensor.detach().cpu()
               for name, model in models.items() if model is not None
               for key, tensor in get_peft_model_state_dict(model).items()}
    path = directory / TRAINING_STATE_FILENAME
    write_file_atomically(path, safetensors_bytes(tensors))
    return path


def load_training_state(path: Path, models: dict) -> None:
    """Put :func:`save_training_state`'s weights back into the peft-wrapped training models."""
    from peft.utils import set_peft_model_state_dict

    tensors, _ = read_lora(path)
    for name, model in models.items():
        if model is None:
            continue
        prefix = f"{name}."
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        result = set_peft_model_state_dict(model, state, adapter_name="default")
        if result.unexpected_keys:
            raise LikenessError(f"checkpoint {path} does not match this model: {result.unexpected_keys[0]}")


def load_lora_into_training_models(path: Path, unet, text_encoder=None, text_encoder_2=None) -> None:
    """Resume from a checkpoint written before checkpoints kept their training state (scale not folded)."""
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
    """Convert a diffusers-format SDXL LoRA state dict to kohya's keys (lora_unet_*, lora_te1_*, lora_te2_*).

    ``alphas`` holds each component's alpha where the file's metadata gives one; without it a
    module's alpha is its rank (scale 1), which is what our files hold since the scale is folded in.
    """
    import torch

    out = {}
    for key, tensor in state_dict.items():
        if match := _UNET_KEY.match(key):
            name = "lora_unet_" + _sgm_unet_module(match["module"], layers_per_block).replace(".", "_")
            component = "unet"
        elif match := _TE_KEY.match(key):
            prefix = "lora_te2_" if match["encoder"] == "text_encoder_2" else "lora_te1_"
            # kohya names the encoders' modules as transformers 4 did: text_model.encoder.layers.N...
            name = prefix + _standard_text_encoder_key(match["module"]).replace(".", "_")
            component = match["encoder"]
        else:
            raise LikenessError(f"unexpected key in LoRA file: {key}")
        down = match["which"] in ("A", "down")
        out[f"{name}.{'lora_down' if down else 'lora_up'}.weight"] = tensor.contiguous()
        if down:
            out[f"{name}.alpha"] = torch.tensor(float(alphas.get(component, tensor.shape[0])))
    return out


def export_kohya(lora_path: Path, dest: Path, layers_per_block: int = 2, name: str | None = None) -> Path:
    """Write ``lora_path`` (ours, diffusers format) as a kohya-style file that ComfyUI, A1111 and Forge load.

    ``name`` becomes ``ss_output_name``, the alias A1111 and Forge show and match ``<lora:NAME:…>`` by.
    """
    state_dict, metadata = read_lora(lora_path)
    # diffusers flattens the per-component adapter configs to "unet.r", "text_encoder.lora_alpha", ...
    try:
        flat = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        flat = {}
    alphas = {component: float(flat[f"{component}.lora_alpha"])
              for component in ("unet", *_TEXT_ENCODERS) if f"{component}.lora_alpha" in flat}
    kohya = to_kohya(state_dict, alphas, layers_per_block)
    ranks = sorted({int(t.shape[0]) for k, t in kohya.items() if k.endswith(".lora_down.weight")})
    if not ranks:
        raise LikenessError(f"{lora_path} holds no LoRA weights")
    out_meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0",
                "ss_network_dim": str(ranks[-1]),
                "ss_network_alpha": str(alphas.get("unet", float(ranks[-1])))}
    if name:
        out_meta["ss_output_name"] = name
    write_file_atomically(dest, safetensors_bytes(kohya, out_meta))
    return dest
