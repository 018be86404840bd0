"""Resolving ``--base`` to something diffusers can load, and loading it.

Four kinds: the built-in ``tiny`` model, a local diffusers folder, a single-file ``.safetensors``
checkpoint, and a Hugging Face repo id (downloaded once into the standard HF cache). Each failure
a user can fix is reported as one line that says what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import LikenessError
from engine.settings import Settings

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BaseModelSource:
    """A resolved ``--base``: what the user asked for and where diffusers should load it from."""

    spec: str
    kind: Literal["tiny", "folder", "single_file", "hub"]
    location: str  # a local path, or the repo id for the hub

    def to_json(self) -> dict[str, str]:
        return {"spec": self.spec, "kind": self.kind, "location": self.location}


def resolve_base(spec: str, settings: Settings) -> BaseModelSource:
    """Decide what ``spec`` names, building the tiny model when asked for it. No download here."""
    if spec == "tiny":
        from engine.models.tiny import ensure_tiny_model

        return BaseModelSource(spec, "tiny", str(ensure_tiny_model(settings.models_dir)))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise LikenessError(f"base model folder {path} has no model_index.json (not a diffusers model folder)")
        return BaseModelSource(spec, "folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", ".ckpt"):
            raise LikenessError(f"base model file {path} must be a .safetensors (or .ckpt) SDXL checkpoint")
        return BaseModelSource(spec, "single_file", str(path.resolve()))
    if spec.endswith((".safetensors", ".ckpt")) or spec.startswith(("/", "./", "../", "~")):
        raise LikenessError(f"base model {spec} does not exist")
    if REPO_ID.match(spec):
        return BaseModelSource(spec, "hub", spec)
    raise LikenessError(
        f"unknown base model {spec!r}: give a Hugging Face repo id (owner/name), a diffusers folder, "
        "a .safetensors file, or 'tiny'"
    )


def check_base_available(source: BaseModelSource, in_the_cloud: bool = False) -> None:
    """Fail now, not after minutes of prep or on a cloud GPU, when the base cannot be loaded.

    A single file must be a readable SDXL checkpoint; a hub model must be cached, or the hub must
    be reachable and know it. All of this is seconds at most, before anything is placed or loaded.
    A run sent to the cloud downloads the model there: this machine's cache does not matter, and
    in offline mode there is nothing to ask.
    """
    if source.kind == "single_file":
        _check_single_file(source)
    if source.kind != "hub":
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    cached = try_to_load_from_cache(source.location, "model_index.json")
    if isinstance(cached, str):
        return
    if HF_HUB_OFFLINE:
        if in_the_cloud:
            return
        raise _offline_error(source.location)
    from huggingface_hub import file_exists

    try:
        exists = file_exists(source.location, "model_index.json")
    except Exception as error:  # noqa: BLE001 - httpx's and the hub's errors have no common base
        if _looks_offline(error):
            raise _offline_error(source.location) from None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"base model {source.location}: the Hugging Face hub refused it: {first[:200]}") from None
    if not exists:
        raise LikenessError(f"base model {source.location} is not a diffusers model on the Hugging Face hub "
                            "(no model_index.json there)")


def _check_single_file(source: BaseModelSource) -> None:
    """A .safetensors base must hold SDXL's UNet in the original layout, which from_single_file reads."""
    if not source.location.lower().endswith(".safetensors"):
        return  # a .ckpt is a pickle: nothing to read without loading it
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(source.location, framework="numpy") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"base model {source.spec} is not a readable .safetensors file: {reason}") from None
    if not any(key.startswith("model.diffusion_model.") for key in keys):
        raise LikenessError(f"base model {source.spec} is not an SDXL checkpoint (no model.diffusion_model.* "
                            "weights; a diffusers folder goes to --base as the folder)")


def base_fingerprint(source: BaseModelSource, settings: Settings) -> dict[str, str]:
    """What identifies the base's weights: a hub model's revision, a file's sha256, a folder's UNet's sha256."""
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "model_index.json")
        return {"revision": Path(cached).parent.name} if isinstance(cached, str) else {}
    if source.kind == "single_file":
        return {"sha256": file_sha256(Path(source.location), settings)}
    unet = Path(source.location) / "unet"
    weights = sorted(unet.glob("*.safetensors")) or sorted(unet.glob("*.bin"))
    return {"unet_sha256": file_sha256(weights[0], settings)} if weights else {}


def file_sha256(path: Path, settings: Settings) -> str:
    """sha256 of ``path``, remembered by path, size and modification time: a 7 GB checkpoint is hashed once."""
    import hashlib
    import json
    import os

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = settings.home / "cache" / "file-hashes.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    known[key] = digest.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(partial, cache)
    except OSError:
        pass  # a cache we cannot write only costs the hash again next time
    return known[key]


def _offline_error(repo_id: str) -> LikenessError:
    return LikenessError(
        f"base model {repo_id} is not in the Hugging Face cache and the hub cannot be reached: "
        f"on a connected machine run `hf download {repo_id}` (it lands in $HF_HOME/hub, "
        "default ~/.cache/huggingface/hub), or pass --base with a local folder or .safetensors file"
    )


def load_sdxl_pipeline(source: BaseModelSource, torch_dtype=None):
    """Load an SDXL pipeline (on the CPU) from a resolved base. ``torch_dtype``: one dtype, or one per
    component as diffusers takes it ({"default": bf16, "vae": fp32}), so no weight is loaded wider than used."""
    from engine.quiet import quiet_libraries

    quiet_libraries()
    from diffusers import StableDiffusionXLPipeline

    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        if source.kind == "single_file":
            return _load_single_file(source.location, torch_dtype)
        if source.kind == "hub":
            return _load_from_hub(source.location, kwargs)
        return StableDiffusionXLPipeline.from_pretrained(source.location, **kwargs)
    except LikenessError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        if source.kind == "single_file" and _looks_offline(error):
            raise LikenessError(
                f"loading {source.location} needs SDXL's config files from the hub, which cannot be reached; "
                "convert it once on a connected machine, or pass --base with a diffusers folder"
            ) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"base model {source.spec} could not be loaded as SDXL: {first_line}") from None


def _load_single_file(location: str, torch_dtype):
    """diffusers' single-file loader takes one dtype: the VAE, if it wants another, is loaded on its own."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    if not isinstance(torch_dtype, dict):
        return StableDiffusionXLPipeline.from_single_file(location, **({"dtype": torch_dtype} if torch_dtype else {}))
    default = torch_dtype.get("default")
    extra = {}
    if "vae" in torch_dtype and torch_dtype["vae"] != default:
        extra["vae"] = AutoencoderKL.from_single_file(location, torch_dtype=torch_dtype["vae"])
    return StableDiffusionXLPipeline.from_single_file(location, torch_dtype=default, **extra)


def _load_from_hub(repo_id: str, kwargs: dict):
    from diffusers import StableDiffusionXLPipeline

    # The cache first, without touching the network: a cached model works offline and starts fast.
    try:
        return StableDiffusionXLPipeline.from_pretrained(repo_id, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        raise _offline_error(repo_id)
    try:
        return StableDiffusionXLPipeline.from_pretrained(repo_id, **kwargs)
    except (OSError, ValueError) as error:
        if _looks_offline(error):
            raise _offline_error(repo_id) from None
        raise


def _looks_offline(error: BaseException) -> bool:
    """True when the root cause is a network failure rather than a bad model."""
    seen = error
    while seen is not None:
        name = type(seen).__name__
        text = str(seen).lower()
        if name in ("ConnectError", "ConnectionError", "ConnectTimeout", "LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            return True
        if any(s in text for s in ("connection", "offline", "resolve host", "network is unreachable", "cannot find the requested files")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
