"""Generation: base SDXL + a LoRA, over sweeps of prompt placeholders and sampling parameters.

Temperature is DDIM's eta: 0 is deterministic DDIM (the same seed gives the same, "safe" image
along the most probable path), 1 adds the full DDPM noise at every step (the most varied).
Every image is plain diffusers: its JSON sidecar names everything needed to make it again.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import LikenessError
from engine.events import EventSink, Log, Progress, Started, ignore_events
from engine.grid import labelled_grid, save_png_atomically
from engine.identity_scores import identity_for_dataset, score_images, score_label
from engine.lora_files import LORA_FILENAME
from engine.run_dir import RunDir
from engine.settings import Settings
from engine.sweeps import PARAMETER_AXES, check_template, expand, placeholders
from engine.train_config import DEFAULT_BASE

DEFAULT_PROMPT = "a photo of {token} {class_word}"


class GenerateConfig(BaseModel):
    """What to draw, with which model, over which sweeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora: Path | None = Field(default=None, description="A run directory, or any LoRA .safetensors file; none = base only.")
    step: int | None = Field(default=None, ge=0, description="Use the run's checkpoint at this step instead of its final LoRA.")
    base: str | None = Field(default=None, description="Base model; default: the run's base, else SDXL base 1.0.")
    prompt: str = Field(default=DEFAULT_PROMPT, description="Prompt template; {placeholders} are filled from sweeps.")
    negative_prompt: str = Field(default="", description="Negative prompt.")
    sweeps: dict[str, list[Any]] = Field(default_factory=dict, description="Axis name -> values; first axis = columns.")
    seed: int = Field(default=0, ge=0, description="Seed of the CPU generator that makes the initial noise.")
    steps: int = Field(default=30, gt=0, description="Denoising steps.")
    guidance: float = Field(default=5.0, ge=0, description="Classifier-free guidance scale.")
    lora_scale: float = Field(default=1.0, ge=0, description="LoRA strength: 0 = the base model exactly, 1 = as trained.")
    temperature: float = Field(default=0.0, ge=0, le=1, description="Sampling randomness: DDIM eta, 0..1.")
    width: int | None = Field(default=None, ge=64, multiple_of=8, description="Width; default: the run's resolution, else 1024.")
    height: int | None = Field(default=None, ge=64, multiple_of=8, description="Height; default: as width.")
    token: str | None = Field(default=None, description="Value of {token}; default: the run's token, else sks.")
    class_word: str | None = Field(default=None, description="Value of {class_word}; default: the run's, else person.")
    out: Path | None = Field(default=None, description="Output folder; default: RUN_DIR/generations/<time> or ./likeness-out/<time>.")
    force: bool = Field(default=False, description="Write into an output folder that already holds images.")
    device: str = Field(default="auto", description="torch device: auto, cpu, cuda, cuda:N.")
    mixed_precision: str = Field(default="auto", description="auto = fp16/bf16 on CUDA, fp32 on CPU.")


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    sidecar: dict[str, Any]


@dataclass(frozen=True)
class GenerateResult:
    out: Path
    images: list[GeneratedImage]
    grids: list[Path]


@dataclass(frozen=True)
class _LoraSource:
    run: dict[str, Any] | None  # run.json when the LoRA is one of our runs
    run_dir: Path | None

    def file_for(self, lora: Path, step: int | None) -> Path:
        if self.run_dir is None:
            if step is not None:
                raise LikenessError("--step needs --lora to be a run directory, not a file")
            return lora.resolve()
        if step is None:
            path = self.run_dir / LORA_FILENAME
            if not path.is_file():
                raise LikenessError(f"{self.run_dir} has no final {LORA_FILENAME} yet; pick a checkpoint with --step")
            return path.resolve()
        path = RunDir(self.run_dir).checkpoint_path(step) / LORA_FILENAME
        if not path.is_file() and self.run and self.run.get("steps_done") == step:
            path = self.run_dir / LORA_FILENAME  # the last step's weights are the final LoRA
        if not path.is_file():
            steps = RunDir(self.run_dir).checkpoint_steps()
            raise LikenessError(f"{self.run_dir} has no checkpoint at step {step} (it has: {steps or 'none'})")
        return path.resolve()


def _lora_source(lora: Path | None) -> _LoraSource:
    if lora is None:
        return _LoraSource(None, None)
    if lora.is_dir():
        return _LoraSource(RunDir(lora).read_run(), lora)
    if lora.is_file():
        if lora.suffix.lower() != ".safetensors":
            raise LikenessError(f"--lora {lora} must be a run directory or a .safetensors file")
        return _LoraSource(None, None)
    raise LikenessError(f"--lora {lora} does not exist")


def a1111_parameters(sidecar: dict[str, Any]) -> str:
    """The 'parameters' PNG text chunk as A1111 writes it, so its PNG Info tab and civitai read it."""
    prompt = sidecar["prompt"]
    if sidecar["lora"] and sidecar["lora_scale"]:
        prompt += f" <lora:{Path(sidecar['lora']).stem}:{sidecar['lora_scale']:g}>"
    return (
        f"{prompt}\nNegative prompt: {sidecar['negative_prompt']}\n"
        f"Steps: {sidecar['steps']}, Sampler: DDIM, Schedule type: Automatic, CFG scale: {sidecar['guidance_scale']:g}, "
        f"Seed: {sidecar['seed']}, Size: {sidecar['width']}x{sidecar['height']}, "
        f"Model: {Path(sidecar['base']).name}, Eta DDIM: {sidecar['eta']:g}, Version: likeness {sidecar['likeness_version']}"
    )


def generate(config: GenerateConfig, settings: Settings, on_event: EventSink = ignore_events) -> GenerateResult:
    """Draw every combination of the sweeps; write images, sidecars and labelled grids."""
    from engine.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import DDIMScheduler
    from PIL.PngImagePlugin import PngInfo

    from engine.base_models import load_sdxl_pipeline, resolve_base
    from engine.device import choose_placement
    from engine.versions import library_versions

    # 1. Check everything cheap before loading anything heavy.
    source = _lora_source(config.lora)
    run_config = (source.run or {}).get("config", {})
    fixed = {"token": config.token or run_config.get("token", "sks"),
             "class_word": config.class_word or run_config.get("class_word", "person")}
    axes = dict(config.sweeps)
    check_template(config.prompt, axes, fixed)
    steps_axis = axes.get("step", [config.step])
    if config.lora is None and ("lora_scale" in axes or "step" in axes or config.step is not None):
        raise LikenessError("lora_scale and step need --lora")
    lora_files = {step: source.file_for(config.lora, step) for step in steps_axis} if config.lora else {}
    width = config.width or run_config.get("resolution") or 1024
    height = config.height or width
    out = _output_folder(config, source)
    placement = choose_placement(config.device, config.mixed_precision)
    base = resolve_base(config.base or run_config.get("base") or DEFAULT_BASE, settings)

    # 2. Load the base once, and every LoRA it needs as a named adapter.
    dtype = getattr(torch, placement.weight_dtype)
    pipe = load_sdxl_pipeline(base, torch_dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    adapters = {}
    for step, path in lora_files.items():
        name = "lora" if step is None else f"step_{step}"
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LikenessError(f"LoRA {path} does not fit base {base.spec}: {first[:200]}") from None
        adapters[step] = name

    # 3. Draw every combination, scoring each against the person's face where the run knows it.
    dataset = (source.run or {}).get("dataset")
    identity = identity_for_dataset(Path(dataset)) if dataset else None
    combos = expand(axes) if axes else [{}]
    versions = library_versions()
    on_event(Started(0, len(combos)))
    images: list[GeneratedImage] = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for index, combo in enumerate(combos):
        values = {**fixed, **{k: v for k, v in combo.items() if k not in PARAMETER_AXES}}
        params = {name: combo.get(name, getattr(config, name))
                  for name in ("lora_scale", "temperature", "guidance", "seed", "steps", "step")}
        prompt = config.prompt.format(**{k: values[k] for k in placeholders(config.prompt)})
        lora_path = lora_files.get(params["step"]) if lora_files else None
        if lora_path is not None and params["lora_scale"] > 0:
            pipe.enable_lora()
            pipe.set_adapters([adapters[params["step"]]], adapter_weights=[params["lora_scale"]])
        elif lora_files:
            pipe.disable_lora()  # scale 0 is the base model exactly, not a LoRA multiplied by zero
        started = dt.datetime.now()
        with torch.no_grad():
            image = pipe(
                prompt=prompt, negative_prompt=config.negative_prompt or None,
                num_inference_steps=params["steps"], guidance_scale=params["guidance"], eta=params["temperature"],
                width=width, height=height, generator=torch.Generator("cpu").manual_seed(params["seed"]),
            ).images[0]
        seconds = (dt.datetime.now() - started).total_seconds()
        score = score_images(identity, [image])[0]
        sidecar = {
            "prompt": prompt, "negative_prompt": config.negative_prompt, "template": config.prompt,
            "placeholders": values, "seed": params["seed"], "generator_device": "cpu",
            "steps": params["steps"], "guidance_scale": params["guidance"],
            "temperature": params["temperature"], "eta": params["temperature"], "scheduler": "DDIMScheduler",
            "width": width, "height": height, "base": base.location, "base_spec": base.spec,
            "lora": str(lora_path) if lora_path else None, "lora_scale": params["lora_scale"] if lora_path else 0.0,
            "checkpoint_step": params["step"], "torch_dtype": placement.weight_dtype, "device": placement.device,
            "seconds": round(seconds, 3), "identity_score": score, "likeness_version": versions["likeness"],
            "diffusers_version": versions["diffusers"], "sweep": {k: v for k, v in combo.items()},
        }
        path = out / "images" / f"{index:04d}.png"
        info = PngInfo()
        info.add_text("parameters", a1111_parameters(sidecar))
        info.add_text("likeness", json.dumps(sidecar))
        save_png_atomically(image, path, pnginfo=info)
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        images.append(GeneratedImage(path, sidecar))
        on_event(Progress(index + 1, len(combos), None, None, seconds, seconds * (len(combos) - index - 1)))

    heading = grid_heading(config, axes)
    grids = _write_grids(out, axes, images, scored=identity is not None, heading=heading)
    for grid in grids:
        on_event(Log(f"grid: {grid}"))
    return GenerateResult(out, images, grids)


def _output_folder(config: GenerateConfig, source: _LoraSource) -> Path:
    from engine.run_dir import ensure_writable

    if config.out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        parent = source.run_dir / "generations" if source.run_dir else Path("likeness-out")
        out = parent / stamp
    else:
        out = config.out
        if out.exists() and not out.is_dir():
            raise LikenessError(f"--out {out} is a file, not a folder")
        if (out / "images").is_dir() and any((out / "images").iterdir()) and not config.force:
            raise LikenessError(f"--out {out} already holds generated images; pass --force or choose another folder")
    ensure_writable(out)
    return out


def _label(name: str, value: Any) -> str:
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def grid_heading(config: GenerateConfig, axes: dict[str, list[Any]]) -> str:
    """The grid's title line: prompt, run, step and seed (those not swept), so a saved PNG says what it shows."""
    lora = config.lora
    if lora is None:
        run = "no LoRA (the base model)"
    else:
        run = f"run {lora.name}" if lora.is_dir() else f"LoRA {lora.name}"
    parts = [f'"{config.prompt}"', run]
    if lora is not None and "step" not in axes:
        parts.append(f"step {config.step}" if config.step is not None else "final step")
    if "seed" not in axes:
        parts.append(f"seed {config.seed}")
    return " · ".join(parts)


def _write_grids(out: Path, axes: dict[str, list[Any]], images: list[GeneratedImage], scored: bool,
                 heading: str = "") -> list[Path]:
    """First axis across, second down; one grid per combination of any further axes."""
    from PIL import Image

    names = list(axes)
    col_name = names[0] if names else None
    row_name = names[1] if len(names) > 1 else None
    pages: dict[tuple, dict[tuple, tuple[Image.Image, str]]] = {}
    for item in images:
        sweep = item.sidecar["sweep"]
        page_key = tuple((n, sweep[n]) for n in names[2:])
        label = score_label(item.sidecar["identity_score"]) if scored else ""
        with Image.open(item.path) as opened:
            pages.setdefault(page_key, {})[(sweep.get(row_name), sweep.get(col_name))] = (opened.convert("RGB"), label)
    cols = axes[col_name] if col_name else [None]
    rows = axes[row_name] if row_name else [None]
    grids = []
    for page_key, cells in pages.items():
        grid = labelled_grid(
            [[cells[(r, c)][0] for c in cols] for r in rows],
            [_label(row_name, r) if row_name else "" for r in rows],
            [_label(col_name, c) if col_name else "" for c in cols],
            title=" · ".join(part for part in (heading, ", ".join(_label(n, v) for n, v in page_key)) if part) or None,
            cell_labels=[[cells[(r, c)][1] for c in cols] for r in rows] if scored else None,
        )
        suffix = "".join(f"-{n}={v}" for n, v in page_key)
        path = out / f"grid{suffix}.png"
        save_png_atomically(grid, path)
        grids.append(path)
    return grids
