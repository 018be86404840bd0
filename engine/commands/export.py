"""``likeness export``: a run's LoRA in the format other tools load."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run's LoRA for ComfyUI / A1111 / Forge, or diffusers",
                              description="Write a run's LoRA named after the run: kohya's layout (the run's own "
                                          "lora.safetensors is in it too), which ComfyUI, A1111, Forge and diffusers "
                                          "load, or diffusers' own layout.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    p.add_argument("--format", choices=["kohya", "diffusers"], default="kohya",
                   help="kohya (default: ComfyUI, A1111, Forge, diffusers) or diffusers (peft's names)")
    p.add_argument("--step", type=int, help="export the checkpoint at this step instead of the final LoRA")
    p.add_argument("--out", type=Path, metavar="FILE", help="output .safetensors file (default RUN_DIR/export/<run name>.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--check", action="store_true",
                   help="then check every module maps to full-size SDXL base 1.0 in kohya, A1111 and ComfyUI naming "
                        "(diffusers naming for --format diffusers); exit 2 if one does not")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import LikenessError
    from engine.generation.generator import _lora_source, lora_name
    from engine.models.lora_files import export_lora, lora_info_for_run
    from engine.outputs import check_output_path, create_folder, removed_on_failure
    from engine.training.run_dir import RunDir

    record = RunDir(args.run_dir).read_run() if args.run_dir.is_dir() else None
    if record is None:
        damage = RunDir(args.run_dir).run_damage() if args.run_dir.is_dir() else None
        raise LikenessError(f"{args.run_dir} is not a likeness run directory "
                            f"({f'damaged: {damage}' if damage else 'no run.json'})")
    source = _lora_source(args.run_dir)
    # The LoRA generate draws with by default: the run's recommended step where its checkpoint is kept.
    step, chosen = (args.step, None) if args.step is not None else source.default_step()
    lora = source.file_for(args.run_dir, step)
    # Named after the run, as generate's <lora:NAME:…> tags and "Lora hashes" name it.
    name = lora_name(args.run_dir, step)
    suffix = "-diffusers" if args.format == "diffusers" else ""
    dest = args.out or args.run_dir / "export" / f"{name}{suffix}.safetensors"
    _check_destination(dest, args.run_dir, args.force)
    check_output_path(dest, "--out")
    info = lora_info_for_run(record, name, _layers_per_block(record))
    with removed_on_failure(dest.parent):
        create_folder(dest.parent)
        export_lora(lora, dest, info, args.format)
    if chosen:
        print(chosen.replace("using step", "exported step", 1))
    # The tiny model's layers are narrower than SDXL's: its names map, its shapes cannot.
    tiny = (record.get("base") or {}).get("kind") == "tiny"
    if args.format == "diffusers":
        print(f"diffusers LoRA: {dest}  (pipe.load_lora_weights(\"{dest}\"))")
    else:
        print(f"kohya LoRA: {dest}  (copy it into ComfyUI/models/loras or A1111/Forge models/Lora)")
    if tiny:
        from engine.training.config import DEFAULT_BASE

        print("note: trained on the built-in tiny model, so it loads only on that model; "
              f"a LoRA trained on SDXL base 1.0 (the default --base, {DEFAULT_BASE}) is what ComfyUI, A1111 "
              "and Forge load")
    if args.check:
        from engine.models.lora_compatibility import check_lora_compatibility

        print(check_lora_compatibility(dest, check_shapes=not tiny).summary())
    return 0


def _check_destination(dest: Path, run_dir: Path, force: bool) -> None:
    from engine.errors import LikenessError

    if dest.is_dir():
        raise LikenessError(f"--out {dest} is a folder; give the file to write, e.g. {dest / 'name.safetensors'}")
    if dest.suffix.lower() != ".safetensors":
        raise LikenessError(f"--out {dest} must end in .safetensors: ComfyUI, A1111 and Forge list only those")
    run, export = run_dir.resolve(), (run_dir / "export").resolve()
    target = dest.resolve()
    if dest.exists() and target.is_relative_to(run) and not target.is_relative_to(export):
        raise LikenessError(f"--out {dest} is one of the run's own files; export never overwrites them")
    if dest.exists() and not force:
        raise LikenessError(f"{dest} exists; pass --force to overwrite it")


def _layers_per_block(run: dict) -> int:
    import json

    location = run.get("base", {}).get("location")
    config = Path(location or "") / "unet" / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("layers_per_block", 2))
    return 2  # SDXL's UNet
