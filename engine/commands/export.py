"""``likeness export``: a run's LoRA in the format other tools load."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run's LoRA for ComfyUI / A1111 / Forge",
                              description="Write a run's LoRA as a kohya-style .safetensors file, the format "
                                          "ComfyUI, A1111 and Forge load from their loras folder.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    p.add_argument("--format", choices=["kohya"], default="kohya", help="output format (default kohya)")
    p.add_argument("--step", type=int, help="export the checkpoint at this step instead of the final LoRA")
    p.add_argument("--out", type=Path, metavar="FILE", help="output file (default RUN_DIR/export/<name>-kohya.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import LikenessError
    from engine.generate import _lora_source
    from engine.lora_files import export_kohya
    from engine.run_dir import RunDir

    if not args.run_dir.is_dir() or RunDir(args.run_dir).read_run() is None:
        raise LikenessError(f"{args.run_dir} is not a likeness run directory (no run.json)")
    lora = _lora_source(args.run_dir).file_for(args.run_dir, args.step)
    name = args.run_dir.resolve().name + (f"-step{args.step}" if args.step is not None else "")
    dest = args.out or args.run_dir / "export" / f"{name}-kohya.safetensors"
    if dest.exists() and not args.force:
        raise LikenessError(f"{dest} exists; pass --force to overwrite it")
    layers_per_block = _layers_per_block(RunDir(args.run_dir).read_run())
    export_kohya(lora, dest, layers_per_block)
    print(f"kohya LoRA: {dest}  (copy it into ComfyUI/models/loras or A1111/Forge models/Lora)")
    return 0


def _layers_per_block(run: dict) -> int:
    import json

    location = run.get("base", {}).get("location")
    config = Path(location or "") / "unet" / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("layers_per_block", 2))
    return 2  # SDXL's UNet
