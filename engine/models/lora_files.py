"""LoRA weights on disk: every run's LoRA in kohya's layout, which ComfyUI, A1111, Forge and diffusers
all load, and diffusers' own layout on export for those who want it.

Our files are written so that any loader draws the same picture from them:

- kohya's names (``lora_unet_input_blocks_4_1_…``, ``lora_te1_text_model_encoder_layers_…``) with an
  ``alpha`` beside every module, whatever the installed transformers calls its modules;
- the update's scale (alpha / rank) folded into the up weights and alpha = rank, so a loader that
  ignores alpha (or a file stripped of its metadata) still applies the update at the trained strength;
- kohya's metadata (``ss_*``, its precalculated ``sshs_*`` hashes) and ModelSpec's (``modelspec.*``),
  which A1111, Forge and civitai list and identify a LoRA by;
- one byte layout for the same tensors (sorted header keys), so same-seed runs give byte-identical
  files and whole-file hashes (A1111's AutoV2, civitai's) match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import LikenessError
from engine.models.lora_layouts import (
    COMPONENTS,
    diffusers_tensors,
    kohya_tensors,
    layout_of,
    module_ranks,
    modules_from_tensors,
    sgm_unet_module,
)
from engine.models.lora_validation import check_lora_file, validate_lora

__all__ = ["check_lora_file", "validate_lora"]

LORA_FILENAME = "lora.safetensors"
# Beside a checkpoint's LoRA: the trainable weights exactly as peft holds them (the scale not folded
# in), so a resumed run continues from bit-identical weights whatever alpha / rank is.
TRAINING_STATE_FILENAME = "lora-training-state.safetensors"

# peft target modules: the attention projections, as diffusers' DreamBooth-LoRA script does.
UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
    """The tensors and metadata of a LoRA file, checked first (:func:`validate_lora`): one line says
    why it is not a LoRA likeness can load."""
    from safetensors import SafetensorError, safe_open

    validate_lora(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"{path} is not a readable .safetensors LoRA: {reason}") from None


def lora_hashes(path: Path) -> dict[str, str]:
    """The hashes tools identify a LoRA file by: sha256 of the whole file (AutoV2), and of its
    tensor data after the header (A1111's and civitai's AutoV3 for .safetensors, which survives
    metadata edits)."""
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    return {"sha256": hashlib.sha256(data).hexdigest(), "autov3": hashlib.sha256(data[header:]).hexdigest()}


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file says about itself in kohya's ``ss_*`` and the ModelSpec ``modelspec.*`` keys,
    which A1111, Forge and civitai show and sort by."""

    name: str
    """ss_output_name and modelspec.title: the alias A1111 and Forge list and match ``<lora:NAME:…>`` by."""
    resolution: int = 1024
    """The side, in pixels, of the pictures it was trained on."""
    rank: int | None = None
    """The rank it was trained at."""
    alpha: float | None = None
    """The alpha it was trained at (the file's own alpha is its rank: alpha / rank is in the weights)."""
    date: str | None = None
    """The day (ISO 8601) its run started: a day, not a time, so same-seed runs give the same bytes."""
    base: str | None = None
    """The base model it was trained on, as the run names it."""
    layers_per_block: int = 2
    """The UNet's ResBlocks per level, which the SGM block numbers in kohya's names count by."""


def lora_info_for_run(record: dict, name: str, layers_per_block: int = 2) -> LoraInfo:
    """The :class:`LoraInfo` of a run's LoRA, from its run.json (``name``: the run's, ``-stepN`` for a checkpoint)."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    started = record.get("started_at")
    base = record.get("base") if isinstance(record.get("base"), dict) else {}
    return LoraInfo(name=name, resolution=int(config.get("resolution") or 1024),
                    rank=config.get("rank"), alpha=config.get("lora_alpha"),
                    date=started[:10] if isinstance(started, str) else None,
                    base=base.get("spec") or config.get("base"), layers_per_block=layers_per_block)


def kohya_metadata(info: LoraInfo, ranks: list[int]) -> dict[str, str]:
    """kohya's and ModelSpec's metadata for a file whose modules have ``ranks`` (scale folded in)."""
    dim = ranks[-1]
    meta = {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": "sdxl_base_v1-0",  # A1111 and Forge list a file as SDXL by this
        "ss_network_dim": str(dim),
        # alpha = rank: the strength alpha/rank was trained at is already in the up weights.
        "ss_network_alpha": str(float(dim)),
        "ss_output_name": info.name,
        "ss_resolution": f"({info.resolution}, {info.resolution})",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": info.name,
        "modelspec.resolution": f"{info.resolution}x{info.resolution}",
        "modelspec.prediction_type": "epsilon",
    }
    if info.date:
        meta["modelspec.date"] = info.date
    if info.base:
        meta["ss_sd_model_name"] = info.base
    if info.rank is not None:
        meta["likeness_training_rank"] = str(info.rank)
    if info.alpha is not None:
        meta["likeness_training_alpha"] = str(float(info.alpha))
    return meta


def kohya_hashes(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` and ``sshs_legacy_hash`` as kohya's sd-scripts precalculates them, which
    A1111 takes as the file's hash instead of reading the whole file.

    Both hash the file that the tensors and only the ``ss_*`` metadata make (metadata a user adds
    later must not change them): the model hash is the sha256 of its tensor data (what A1111 calls
    AutoV3, the same for the file as written), the legacy hash the first 8 hex digits of the sha256
    of its 64 KiB from offset 1 MiB.
    """
    from safetensors.torch import save

    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=training)
    data_start = 8 + int.from_bytes(raw[:8], "little")
    return {"sshs_model_hash": hashlib.sha256(raw[data_start:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]}


def write_kohya_lora(dest: Path, modules: dict, info: LoraInfo) -> Path:
    """Write ``modules`` to ``dest`` in kohya's layout with its metadata and hashes."""
    ranks = module_ranks(modules)
    if not ranks:
        raise LikenessError(f"no LoRA weights to write to {dest}")
    tensors = kohya_tensors(modules, info.layers_per_block)
    metadata = kohya_metadata(info, ranks)
    metadata.update(kohya_hashes(tensors, metadata))
    write_file_atomically(dest, safetensors_bytes(tensors, metadata))
    return dest


def write_diffusers_lora(dest: Path, modules: dict) -> Path:
    """Write ``modules`` to ``dest`` in diffusers' own layout, as likeness wrote runs before kohya's."""
    ranks = module_ranks(modules)
    if not ranks:
        raise LikenessError(f"no LoRA weights to write to {dest}")
    flat = {}
    for component in COMPONENTS:
        if any(key.startswith(component + ".") for key in modules):
            targets = UNET_TARGET_MODULES if component == "unet" else TEXT_ENCODER_TARGET_MODULES
            # diffusers' own metadata layout ("unet.r", "text_encoder.lora_alpha", ...), as save_lora_weights writes it.
            flat.update({f"{component}.{k}": v for k, v in adapter_metadata(ranks[-1], float(ranks[-1]), targets).items()})
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(flat, sort_keys=True)}
    write_file_atomically(dest, safetensors_bytes(diffusers_tensors(modules), metadata))
    return dest


def peft_modules(unet, text_encoder=None, text_encoder_2=None, *, alpha: float) -> dict:
    """The LoRA modules of the given peft-wrapped models, alpha / rank folded into the up weights."""
    from peft.utils import get_peft_model_state_dict

    tensors = {}
    for component, model in zip(COMPONENTS, (unet, text_encoder, text_encoder_2), strict=True):
        if model is not None:
            tensors.update({f"{component}.{key}": tensor.detach().cpu()
                            for key, tensor in get_peft_model_state_dict(model).items()})
    return modules_from_tensors(tensors, dict.fromkeys(COMPONENTS, alpha), layers_per_block=2)


def save_lora(directory: Path, unet, text_encoder=None, text_encoder_2=None, *, rank: int, alpha: float,
              info: LoraInfo | None = None) -> Path:
    """Write the LoRA layers of the given (peft-wrapped) models to ``directory/lora.safetensors`` in
    kohya's layout, the one ComfyUI, A1111, Forge and diffusers all load."""
    config = getattr(unet, "config", None)
    layers_per_block = int(getattr(config, "layers_per_block", 2) or 2)
    info = info or LoraInfo(name=directory.name)
    info = replace(info, rank=rank, alpha=alpha, layers_per_block=layers_per_block)
    directory.mkdir(parents=True, exist_ok=True)
    modules = peft_modules(unet, text_encoder, text_encoder_2, alpha=alpha)
    return write_kohya_lora(directory / LORA_FILENAME, modules, info)


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


def read_lora_modules(path: Path, layers_per_block: int = 2) -> tuple[dict, dict[str, str]]:
    """The modules (scale folded in) and metadata of a LoRA file in either layout, checked first."""
    tensors, metadata = read_lora(path)
    # diffusers flattens the per-component adapter configs to "unet.r", "text_encoder.lora_alpha", ...
    try:
        flat = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        flat = {}
    flat = flat if isinstance(flat, dict) else {}
    alphas = {}
    for component in COMPONENTS:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            alphas[component] = float(flat[f"{component}.lora_alpha"])
    modules = modules_from_tensors(tensors, alphas if layout_of(tensors) == "diffusers" else {}, layers_per_block)
    if not modules:
        raise LikenessError(f"{path} holds no LoRA weights")
    return modules, metadata


def export_lora(lora_path: Path, dest: Path, info: LoraInfo, fmt: str = "kohya") -> Path:
    """Write ``lora_path`` (a run's, in either layout) as ``fmt``: ``kohya`` for ComfyUI, A1111, Forge
    (and diffusers), ``diffusers`` for diffusers' own layout."""
    modules, _ = read_lora_modules(lora_path, info.layers_per_block)
    if fmt == "diffusers":
        return write_diffusers_lora(dest, modules)
    return write_kohya_lora(dest, modules, info)


def export_kohya(lora_path: Path, dest: Path, layers_per_block: int = 2, name: str | None = None) -> Path:
    """Write ``lora_path`` as a kohya-style file that ComfyUI, A1111 and Forge load, keeping what its
    metadata says about its training; ``name`` becomes ``ss_output_name``."""
    _, metadata = read_lora(lora_path)
    resolution = re.fullmatch(r"(\d+)x\d+", metadata.get("modelspec.resolution", ""))
    rank, alpha = metadata.get("likeness_training_rank"), metadata.get("likeness_training_alpha")
    info = LoraInfo(name=name or metadata.get("ss_output_name") or lora_path.stem,
                    resolution=int(resolution[1]) if resolution else 1024,
                    rank=int(rank) if rank and rank.isdigit() else None,
                    alpha=float(alpha) if alpha and re.fullmatch(r"[0-9.]+", alpha) else None,
                    date=metadata.get("modelspec.date"), base=metadata.get("ss_sd_model_name"),
                    layers_per_block=layers_per_block)
    return export_lora(lora_path, dest, info, "kohya")


def to_kohya(state_dict: dict, alphas: dict[str, float], layers_per_block: int) -> dict:
    """Convert a diffusers-format SDXL LoRA state dict to kohya's keys (lora_unet_*, lora_te1_*, lora_te2_*)."""
    return kohya_tensors(modules_from_tensors(state_dict, alphas, layers_per_block), layers_per_block)


_sgm_unet_module = sgm_unet_module  # the name the unit tests know it by
