"""Generation: base SDXL + a LoRA, over sweeps of prompt placeholders and sampling parameters.

Temperature is DDIM's eta: 0 is deterministic DDIM (the same seed gives the same, "safe" image
along the most probable path), 1 adds the full DDPM noise at every step (the most varied).
Every image is plain diffusers: its JSON sidecar names everything needed to make it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from engine.errors import LikenessError
from engine.events import EventSink, Log, Progress, Started, ignore_events
from engine.generation.sweeps import PARAMETER_AXES, check_template, expand, placeholders
from engine.grid import labelled_grid, save_png_atomically
from engine.models.lora_files import LORA_FILENAME
from engine.prep.identity_scores import identity_for_dataset, score_images, score_label
from engine.prompts import MAX_PROMPT_CHARS, fill
from engine.settings import Settings
from engine.training.config import DEFAULT_BASE, MAX_SEED, MAX_SIDE, MAX_STEPS
from engine.training.run_dir import RunDir

DEFAULT_PROMPT = "a photo of {token} {class_word}"
# One grid of 1,000 SDXL images is hours of GPU time; a sweep asking for more is a mistake.
MAX_IMAGES = 1000


class GenerateConfig(BaseModel):
    """What to draw, with which model, over which sweeps."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lora: Path | None = Field(default=None, description="A run directory, or any LoRA .safetensors file; none = base only.")
    step: int | None = Field(default=None, ge=0, le=MAX_STEPS, strict=True,
                             description="Use the run's checkpoint at this step; default: the run's "
                             "recommended step (run.json), else its final LoRA.")
    base: str | None = Field(default=None, description="Base model; default: the run's base, else SDXL base 1.0.")
    prompt: str = Field(default=DEFAULT_PROMPT, max_length=MAX_PROMPT_CHARS,
                        description="Prompt template; {placeholders} (plain names) are filled from sweeps.")
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS, description="Negative prompt.")
    sweeps: dict[str, list[Any]] = Field(default_factory=dict, description="Axis name -> values; first axis = columns.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, strict=True, description="Seed of the CPU generator that makes the initial noise.")
    steps: int = Field(default=30, gt=0, le=1000, strict=True, description="Denoising steps.")
    guidance: float = Field(default=5.0, ge=0, le=100, description="Classifier-free guidance scale.")
    lora_scale: float = Field(default=1.0, ge=0, le=10, description="LoRA strength: 0 = the base model exactly, 1 = as trained.")
    temperature: float = Field(default=0.0, ge=0, le=1, description="Sampling randomness: DDIM eta, 0..1.")
    width: int | None = Field(default=None, ge=64, le=MAX_SIDE, multiple_of=8, strict=True, description="Width; default: the run's resolution, else 1024.")
    height: int | None = Field(default=None, ge=64, le=MAX_SIDE, multiple_of=8, strict=True, description="Height; default: as width.")
    token: str | None = Field(default=None, description="Value of {token}; default: the run's token, else sks.")
    class_word: str | None = Field(default=None, description="Value of {class_word}; default: the run's, else person.")
    out: Path | None = Field(default=None, description="Output folder; default: RUN_DIR/generations/<time> or ./likeness-out/<time>.")
    force: bool = Field(default=False, description="Write into an output folder that already holds images.")
    device: str = Field(default="auto", description="torch device: auto, cpu, cuda, cuda:N.")
    mixed_precision: str = Field(default="auto", description="auto = fp16/bf16 on CUDA, fp32 on CPU.")

    @field_validator("prompt")
    @classmethod
    def _plain_placeholders(cls, prompt: str) -> str:
        try:
            placeholders(prompt)
        except LikenessError as error:
            raise ValueError(str(error)) from None
        return prompt

    @field_validator("sweeps")
    @classmethod
    def _sweeps_within_bounds(cls, sweeps: dict[str, list[Any]]) -> dict[str, list[Any]]:
        # A swept parameter takes the same values as the field it sweeps (seed 2**70 or guidance
        # Infinity is refused here, not half-way through a grid), and the grid has a size limit.
        images = 1
        for name, values in sweeps.items():
            if not values:
                raise ValueError(f"{name} has no values")
            images *= len(values)
            if images > MAX_IMAGES:
                raise ValueError(f"the sweeps make over {MAX_IMAGES} images; split them into smaller runs")
            if name in PARAMETER_AXES:
                adapter = _axis_adapter(cls, name)
                for value in values:
                    try:
                        adapter.validate_python(value)
                    except ValidationError as error:
                        raise ValueError(f"{name} value {value!r}: {error.errors()[0]['msg']}") from None
        return sweeps


def _axis_adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    """A validator for one swept value of the field `name`, with that field's type and bounds."""
    from typing import Annotated

    field = model.model_fields[name]
    return TypeAdapter(Annotated[PARAMETER_AXES[name], *field.metadata], config=ConfigDict(allow_inf_nan=False))


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

    def default_step(self) -> tuple[int | None, str | None]:
        """The run's recommended step where its checkpoint is there (else None: the final LoRA), and
        the line that says which was taken."""
        recommendation = (self.run or {}).get("recommendation") or {}
        if not isinstance(recommendation, dict):  # a hand-edited run.json: no recommendation to follow
            return None, None
        step = recommendation.get("step")
        if self.run_dir is None or step is None:
            return None, None
        final = self.run.get("status") == "done" and self.run.get("steps_done") == step
        if not final and not (RunDir(self.run_dir).checkpoint_path(step) / LORA_FILENAME).is_file():
            return None, f"the recommended step {step} has no checkpoint left; using the final LoRA"
        return step, (f"using step {step}, the run's recommended checkpoint ({recommendation.get('reason')}); "
                      f"--step N picks another")


def _lora_source(lora: Path | None) -> _LoraSource:
    if lora is None:
        return _LoraSource(None, None)
    if lora.is_dir():
        run = RunDir(lora).read_run()
        if run is None and not (lora / LORA_FILENAME).is_file():
            damage = RunDir(lora).run_damage()
            raise LikenessError(f"--lora {lora} is not a run or a LoRA file" + (f" ({damage})" if damage else ""))
        return _LoraSource(run, lora)
    if lora.is_file():
        if lora.suffix.lower() != ".safetensors":
            raise LikenessError(f"--lora {lora} must be a run directory or a .safetensors file")
        return _LoraSource(None, None)
    raise LikenessError(f"--lora {lora} does not exist")


def lora_files_to_load(config: GenerateConfig) -> list[Path]:
    """The LoRA files ``config`` would load (one per step it draws), for checking them before a job
    that would load them is queued."""
    if config.lora is None:
        return []
    source = _lora_source(config.lora)
    step = config.step if config.step is not None or "step" in config.sweeps else source.default_step()[0]
    steps = [s for s in config.sweeps.get("step", [step]) if s is None or type(s) is int]  # the rest fail later, by name
    return list(dict.fromkeys(source.file_for(config.lora, s) for s in steps))


def lora_line(lora_files: dict[int | None, Path], chosen_by: str | None) -> str:
    """Which LoRA file(s) the pictures are drawn with, and why that step: the run's recommended one,
    the one --step asked for, or the final LoRA."""
    if not lora_files:
        return "drawing with the base model alone (no --lora)"
    why = {"--step": "as --step asked", "recommended": "the run's recommended step"}

    def one(step: int | None, path: Path) -> str:
        reason = why.get(chosen_by or "", "a checkpoint")
        if "checkpoints" in path.parts:
            return f"{path} (step {step}, {reason})"
        return f"{path} (the final LoRA" + (f", step {step}, {reason})" if step is not None else ")")

    return "drawing with LoRA " + "; ".join(one(step, path) for step, path in lora_files.items())


def lora_name(lora: Path, step: int | None = None) -> str:
    """What a LoRA is called in A1111 tags and exports: its run's folder name (``-stepN`` for a
    checkpoint), or a foreign file's own name."""
    if lora.is_dir():
        return lora.resolve().name + (f"-step{step}" if step is not None else "")
    return lora.stem


def _a1111_value(value: str) -> str:
    # A1111 splits its infotext on ", " and ": "; it quotes values holding either, JSON-style.
    return json.dumps(value) if any(c in value for c in ',:"\n') else value


def a1111_parameters(sidecar: dict[str, Any]) -> str:
    """The 'parameters' PNG text chunk as A1111 writes it, so its PNG Info tab and civitai read it."""
    prompt = sidecar["prompt"]
    name = sidecar.get("lora_name")
    if sidecar["lora"] and sidecar["lora_scale"]:
        prompt += f" <lora:{name}:{sidecar['lora_scale']:g}>"
    extras = ""
    model_hash = sidecar.get("base_sha256") or sidecar.get("base_unet_sha256") or sidecar.get("base_revision")
    if model_hash:
        extras += f"Model hash: {model_hash[:10]}, "
    extras += f"Model: {_a1111_value(sidecar.get('base_arg') or sidecar['base'])}, Eta DDIM: {sidecar['eta']:g}, "
    if sidecar["lora"] and sidecar["lora_scale"] and sidecar.get("lora_autov3"):
        # A1111's "Lora hashes" are AutoV3 short hashes: sha256 of the tensor data, first 12 digits.
        extras += f"Lora hashes: {json.dumps(f'{name}: ' + sidecar['lora_autov3'][:12])}, "
    return (
        f"{prompt}\nNegative prompt: {sidecar['negative_prompt']}\n"
        f"Steps: {sidecar['steps']}, Sampler: DDIM, Schedule type: Automatic, CFG scale: {sidecar['guidance_scale']:g}, "
        f"Seed: {sidecar['seed']}, Size: {sidecar['width']}x{sidecar['height']}, "
        f"{extras}Version: likeness {sidecar['likeness_version']}"
    )


def generate(config: GenerateConfig, settings: Settings, on_event: EventSink = ignore_events) -> GenerateResult:
    """Draw every combination of the sweeps; write images, sidecars and labelled grids."""
    from engine.models.base_model import base_fingerprint, check_base_available, resolve_base
    from engine.models.lora_files import check_lora_file, lora_hashes
    from engine.outputs import check_output_path

    # 1. Check everything cheap before loading anything heavy: torch and diffusers take seconds to
    # import, and a typo should cost less than that.
    source = _lora_source(config.lora)
    run_config = (source.run or {}).get("config", {})
    fixed = {"token": config.token or run_config.get("token", "sks"),
             "class_word": config.class_word or run_config.get("class_word", "person")}
    axes = dict(config.sweeps)
    check_template(config.prompt, axes, fixed)
    chosen_step, said = (config.step, None) if config.step is not None or "step" in axes else source.default_step()
    if said:
        on_event(Log(said))
    steps_axis = axes.get("step", [chosen_step])
    if config.lora is None and ("lora_scale" in axes or "step" in axes or config.step is not None):
        raise LikenessError("lora_scale and step need --lora")
    lora_files = {step: source.file_for(config.lora, step) for step in steps_axis} if config.lora else {}
    for path in dict.fromkeys(lora_files.values()):
        check_lora_file(path)
    width = config.width or run_config.get("resolution") or 1024
    height = config.height or width
    out = _output_folder(config, source)
    base = resolve_base(config.base or run_config.get("base") or DEFAULT_BASE, settings)
    check_base_available(base)
    check_output_path(out, "--out", [("--base", Path(base.location) if base.kind == "folder" else None)])

    from engine.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import DDIMScheduler

    from engine.models.base_model import load_sdxl_pipeline
    from engine.models.device import choose_placement
    from engine.versions import library_versions

    placement = choose_placement(config.device, config.mixed_precision)

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
            # diffusers logs its whole error (a line per layer) before raising it: the raise is enough.
            with _diffusers_silenced():
                pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as error:
            raise _lora_does_not_fit(path, base.spec, error) from None
        adapters[step] = name
    # Said once the LoRA loaded, so a LoRA that does not fit is the one line the user reads.
    on_event(Log(lora_line(lora_files, chosen_by="--step" if config.step is not None or "step" in axes
                           else "recommended" if chosen_step is not None else None)))
    lora = _FusedLora(pipe) if adapters else None
    names = {step: lora_name(config.lora, step) for step in lora_files}
    hashes = {path: lora_hashes(path) for path in dict.fromkeys(lora_files.values())}
    fingerprint = base_fingerprint(base, settings)
    truncated = _warn_long_prompts(pipe, config, axes, fixed, on_event)

    # Only now, with every input valid and loaded, does the output folder come into being.
    _create_output_folder(out)

    # 3. Draw every combination, scoring each against the person's face where the run knows it.
    dataset = (source.run or {}).get("dataset")
    identity = identity_for_dataset(Path(dataset)) if dataset else None
    combos = expand(axes) if axes else [{}]
    versions = library_versions()
    on_event(Started(0, len(combos)))
    # Scoring the face, encoding the PNG and writing the sidecar take the CPU most of a second at
    # 1024 px: a thread does them for one image while the GPU draws the next, so an image costs what
    # the pipeline alone does (dlib and zlib let go of the GIL). At most two wait, so memory stays flat.
    saving = ThreadPoolExecutor(max_workers=1, thread_name_prefix="likeness-save")
    pending: list[Future] = []
    try:
        for index, combo in enumerate(combos):
            if len(pending) >= 2:
                pending[-2].result()  # surfaces a failed save at once, and bounds the queue
            values = {**fixed, **{k: v for k, v in combo.items() if k not in PARAMETER_AXES}}
            params = {name: combo.get(name, getattr(config, name))
                      for name in ("lora_scale", "temperature", "guidance", "seed", "steps")}
            params["step"] = combo.get("step", chosen_step)
            prompt = fill(config.prompt, values)
            lora_path = lora_files.get(params["step"]) if lora_files else None
            if lora is not None:
                lora.use(adapters[params["step"]] if params["lora_scale"] > 0 else None, params["lora_scale"])
            started = dt.datetime.now()
            with torch.no_grad():
                image = pipe(
                    prompt=prompt, negative_prompt=config.negative_prompt or None,
                    num_inference_steps=params["steps"], guidance_scale=params["guidance"], eta=params["temperature"],
                    width=width, height=height, generator=torch.Generator("cpu").manual_seed(params["seed"]),
                ).images[0]
            seconds = (dt.datetime.now() - started).total_seconds()
            sidecar = {
                "prompt": prompt, "negative_prompt": config.negative_prompt, "template": config.prompt,
                "placeholders": values, "seed": params["seed"], "generator_device": "cpu",
                "steps": params["steps"], "guidance_scale": params["guidance"],
                "temperature": params["temperature"], "eta": params["temperature"], "scheduler": "DDIMScheduler",
                "width": width, "height": height, "base": base.location, "base_spec": base.spec,
                "base_arg": base.location if base.kind in ("folder", "single_file") else base.spec,
                "base_sha256": fingerprint.get("sha256"), "base_unet_sha256": fingerprint.get("unet_sha256"),
                "base_revision": fingerprint.get("revision"),
                "lora": str(lora_path) if lora_path else None, "lora_scale": params["lora_scale"] if lora_path else 0.0,
                "lora_name": names[params["step"]] if lora_path else None,
                "lora_sha256": hashes[lora_path]["sha256"] if lora_path else None,
                "lora_autov3": hashes[lora_path]["autov3"] if lora_path else None,
                "prompt_truncated": prompt in truncated,
                "checkpoint_step": params["step"], "torch_dtype": placement.weight_dtype, "device": placement.device,
                "seconds": round(seconds, 3), "identity_score": None, "likeness_version": versions["likeness"],
                "diffusers_version": versions["diffusers"], "sweep": {k: v for k, v in combo.items()},
            }
            pending.append(saving.submit(_save_image, image, sidecar, identity, out / "images" / f"{index:04d}.png"))
            on_event(Progress(index + 1, len(combos), None, None, seconds, seconds * (len(combos) - index - 1)))
        images = [future.result() for future in pending]
    finally:
        saving.shutdown(wait=True, cancel_futures=True)

    heading = grid_heading(config, axes, fixed, chosen_step)
    grids = _write_grids(out, axes, images, scored=identity is not None, heading=heading)
    for grid in grids:
        on_event(Log(f"grid: {grid}"))
    return GenerateResult(out, images, grids)


def _save_image(image, sidecar: dict[str, Any], identity, path: Path) -> GeneratedImage:
    """Score the image's face, then write it with its parameters (A1111's and ours) and its sidecar."""
    from PIL.PngImagePlugin import PngInfo

    sidecar["identity_score"] = score_images(identity, [image])[0]
    info = PngInfo()
    info.add_text("parameters", a1111_parameters(sidecar))
    info.add_text("likeness", json.dumps(sidecar))
    save_png_atomically(image, path, pnginfo=info)
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return GeneratedImage(path, sidecar)


class _FusedLora:
    """One adapter fused into the base weights at one scale at a time.

    Unfused, every LoRA layer adds two small matmuls per call, and generating ran 1.7x slower than the
    base model; fused, it runs at the base model's speed. Changing adapter or scale unfuses and then
    copies the base weights back from a snapshot, because subtracting the fused update again is not
    exact in half precision: scale 0 must be the base model exactly.
    """

    COMPONENTS = ["unet", "text_encoder", "text_encoder_2"]

    def __init__(self, pipe):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.pipe = pipe
        self.layers = [m for name in self.COMPONENTS if getattr(pipe, name, None) is not None
                       for m in getattr(pipe, name).modules() if isinstance(m, BaseTunerLayer)]
        # Only the layers a LoRA touches, and on the CPU: a few hundred MB for SDXL, not the whole UNet.
        self.base = [m.get_base_layer().weight.detach().to("cpu", copy=True) for m in self.layers]
        self.fused: tuple[str, float] | None = None
        self.drawn_with: object = "loaded"  # what the last image was drawn with; loading leaves the LoRA active

    def use(self, adapter: str | None, scale: float) -> None:
        """Draw next with ``adapter`` fused at ``scale``; None: the base model exactly."""
        import torch

        wanted = (adapter, scale) if adapter is not None else None
        if wanted == self.drawn_with:
            return
        self.drawn_with = wanted
        if self.fused is not None:
            self.pipe.unfuse_lora(components=self.COMPONENTS)
            with torch.no_grad():
                for layer, weight in zip(self.layers, self.base, strict=True):
                    layer.get_base_layer().weight.copy_(weight)
            self.fused = None
        if adapter is None:
            self.pipe.disable_lora()  # the LoRA switched off, not multiplied by zero
            return
        self.pipe.enable_lora()
        # set_adapters sets the scale absolutely; fuse_lora's own lora_scale would compound on each re-fuse.
        self.pipe.set_adapters([adapter], adapter_weights=[scale])
        self.pipe.fuse_lora(components=self.COMPONENTS, lora_scale=1.0, adapter_names=[adapter])
        self.fused = wanted


def _output_folder(config: GenerateConfig, source: _LoraSource) -> Path:
    """Where the images go, checked but not created (see :func:`_create_output_folder`)."""
    from engine.outputs import check_output_path

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
    check_output_path(out, "--out")
    return out


def _create_output_folder(out: Path) -> None:
    from engine.outputs import create_folder, removed_on_failure

    with removed_on_failure(out):
        create_folder(out / "images")
        probe = out / ".likeness-write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise LikenessError(f"cannot write to --out {out}: {error.strerror or error}") from None


@contextlib.contextmanager
def _diffusers_silenced():
    import logging

    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _lora_does_not_fit(path: Path, base_spec: str, error: BaseException) -> LikenessError:
    """One line for a LoRA the base cannot take, however many layers diffusers lists."""
    import re

    text = str(error)
    mismatch = re.search(r"size mismatch for (\S+?):.*?torch\.Size\(\[([\d, ]*)\]\).*?torch\.Size\(\[([\d, ]*)\]\)",
                         text, re.DOTALL)
    if mismatch:
        ours = [int(n) for n in mismatch[2].split(",") if n.strip()]
        theirs = [int(n) for n in mismatch[3].split(",") if n.strip()]
        pairs = [(a, b) for a, b in zip(ours, theirs, strict=False) if a != b] or [(ours, theirs)]
        module = re.sub(r"\.(lora_[AB]|lora\.(down|up)|lora_(down|up))(\.\w+)*\.weight$", "", mismatch[1])
        return LikenessError(f"LoRA {path} was made for a model with other layer sizes (e.g. {pairs[0][0]} vs "
                             f"{pairs[0][1]} in {module}): not for base {base_spec}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return LikenessError(f"LoRA {path} does not fit base {base_spec}: {first[:200]}")


def _warn_long_prompts(pipe, config: GenerateConfig, axes: dict, fixed: dict, on_event: EventSink) -> set[str]:
    """Warn about prompts longer than the text encoders read; return them.

    likeness encodes prompts exactly as plain diffusers does (the first 77 tokens), rather than in
    chunks as A1111 and compel do: then the sidecar's prompt, given to plain diffusers, draws the
    same image. What is cut is said here instead of passing in silence.
    """
    tokenizer = pipe.tokenizer
    if tokenizer is None:
        return set()
    limit = tokenizer.model_max_length
    prompt_axes = {k: v for k, v in axes.items() if k not in PARAMETER_AXES}
    prompts = {fill(config.prompt, {**fixed, **combo}) for combo in (expand(prompt_axes) if prompt_axes else [{}])}
    if config.negative_prompt:
        prompts.add(config.negative_prompt)
    long = set()
    for prompt in sorted(prompts):
        ids = tokenizer(prompt, truncation=False).input_ids
        if len(ids) > limit:
            long.add(prompt)
            kept = tokenizer.decode(ids[1:limit - 1]).strip()
            on_event(Log(f"warning: a prompt is {len(ids)} tokens and SDXL's text encoders read {limit}; "
                         f"everything after \"…{kept[-30:]}\" is ignored"))
    return long


def _label(name: str, value: Any) -> str:
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def grid_heading(config: GenerateConfig, axes: dict[str, list[Any]], fixed: dict[str, str],
                 step: int | None) -> str:
    """The grid's title line: prompt, run, step and seed (those not swept), so a saved PNG says what it shows.

    The prompt as drawn ("a photo of sks man at age {age}"): the token and class word filled in,
    a swept placeholder left as it is, since the grid's columns or rows name its values.
    """
    lora = config.lora
    if lora is None:
        run = "no LoRA (the base model)"
    else:
        run = f"run {lora.name}" if lora.is_dir() else f"LoRA {lora.name}"
    prompt = fill(config.prompt, {**fixed, **{name: f"{{{name}}}" for name in axes}})
    parts = [f'"{prompt}"', run]
    if lora is not None and "step" not in axes:
        parts.append(f"step {step}" if step is not None else "final step")
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
        path = _grid_path(out, page_key, grids)
        save_png_atomically(grid, path)
        grids.append(path)
    return grids


def _grid_path(out: Path, page_key: tuple, taken: list[Path]) -> Path:
    """``out/grid-name=value….png`` for one page of a sweep, always a file directly in `out`.

    Sweep values are the user's text: a value ``../../x`` must not become a path. Each is reduced to
    plain file-name characters, the name is bounded, and one that two pages would share gets a number.
    """
    suffix = "".join(f"-{_file_part(str(n))}={_file_part(str(v))}" for n, v in page_key)
    stem = f"grid{suffix}"[:200]
    path, n = out / f"{stem}.png", 2
    while path in taken:
        path, n = out / f"{stem}-{n}.png", n + 1
    # What the name became is checked against the folder, whatever the reduction above missed.
    if Path(os.path.realpath(path)).parent != Path(os.path.realpath(out)):
        raise LikenessError(f"grid file {path.name!r} would be written outside {out}")
    return path


def _file_part(text: str) -> str:
    # Letters, digits and . _ + - only: no separator can remain (and the name starts with "grid").
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:60] or "_"
