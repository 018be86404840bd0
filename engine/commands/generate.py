"""``likeness generate``: pictures from base + LoRA, over sweeps, as labelled grids."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.commands.common import add_config_flag, build_config, flag, switch

_EPILOG = """\
sweeps: --sweep NAME=V1,V2,... over a {placeholder} of the prompt (e.g. age=5,10,18,25,50,80)
or a parameter: lora_scale, temperature, guidance, seed, steps, step (a checkpoint step).
The first sweep runs across the grid, the second down it; more make one grid each.

temperature is DDIM's eta: 0 = deterministic DDIM (the same seed always gives the same,
"safe" image), 1 = full DDPM noise at every step (most varied). lora_scale 0 is the base
model exactly.

example:
  likeness generate --lora runs/me --prompt "a photo of {token} {class_word} at age {age}" \\
      --sweep age=5,10,18,25,50,80 --sweep lora_scale=0,0.5,1
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate pictures with a trained LoRA, over sweeps",
                              description="Generate with base SDXL + a LoRA; sweep any prompt placeholder or parameter.",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(p, "--lora", type=Path, metavar="RUN_DIR|FILE", help="a run directory or any SDXL LoRA .safetensors")
    flag(p, "--step", type=int, help="use the run's checkpoint at this step (default: its recommended step, see run.json)")
    flag(p, "--base", metavar="MODEL", help="base model (default: the run's base)")
    flag(p, "--prompt", help="prompt template (default 'a photo of {token} {class_word}')")
    flag(p, "--negative-prompt", dest="negative_prompt", help="negative prompt")
    p.add_argument("--sweep", action="append", default=argparse.SUPPRESS, metavar="NAME=V1,V2",
                   help="sweep an axis (repeatable)")
    flag(p, "--seed", type=int, help="seed (default 0)")
    flag(p, "--steps", type=int, help="denoising steps (default 30)")
    flag(p, "--guidance", type=float, help="guidance scale (default 5)")
    flag(p, "--lora-scale", dest="lora_scale", type=float, help="LoRA strength 0..1+ (default 1)")
    flag(p, "--temperature", type=float, help="sampling randomness 0..1 = DDIM eta (default 0)")
    flag(p, "--width", type=int, help="width in pixels (default: the run's resolution)")
    flag(p, "--height", type=int, help="height in pixels (default: the width)")
    flag(p, "--token", help="value for {token} (default: the run's)")
    flag(p, "--class-word", dest="class_word", help="value for {class_word} (default: the run's)")
    flag(p, "--out", type=Path, metavar="DIR", help="output folder (default RUN_DIR/generations/<time>)")
    switch(p, "--force", help="write into a folder that already holds images")
    flag(p, "--device", help="auto, cpu, cuda or cuda:N")
    flag(p, "--mixed-precision", dest="mixed_precision", choices=["auto", "no", "fp16", "bf16"], help="precision")
    p.add_argument("--server", metavar="URL",
                   help="submit to a running likeness service (likeness serve) and follow it; paths are the service's, relative to its LIKENESS_HOME")
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import LikenessError
    from engine.generation.generator import GenerateConfig, generate
    from engine.generation.sweeps import parse_sweep, split_sweeps
    from engine.progress import TerminalProgress
    from engine.settings import Settings

    sweeps: dict = {}
    # One --sweep may hold several ("lora_scale=0,1 temperature=0,1"): each NAME= starts one.
    for text in (part for given in getattr(args, "sweep", []) for part in split_sweeps(given)):
        name, values = parse_sweep(text)
        if name in sweeps:
            raise LikenessError(f"--sweep {name} given twice")
        sweeps[name] = values
    config = build_config(GenerateConfig, args, {"sweeps": sweeps} if sweeps else None)
    if args.server:
        from engine.service.client import run_remote

        return run_remote(args.server, "generate", config, unit="image")
    progress = TerminalProgress(unit="image")
    try:
        result = generate(config, Settings(), on_event=progress)
    finally:
        progress.close()
    # The grids' paths were logged as they were written ("grid: …"); printing them again doubled them.
    print(f"{len(result.images)} images in {result.out / 'images'}")
    return 0
