"""``likeness demo``: the whole pipeline on the built-in tiny model, on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on the built-in tiny model (CPU, ~1 minute)",
                              description="Make demo photos, train the tiny SDXL-architecture model for a few "
                                          "steps with sample grids, then generate a lora_scale x temperature grid.")
    p.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR", help="where everything goes (default demo-out)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from engine.demo import run_demo
    from engine.errors import LikenessError
    from engine.progress import TerminalProgress
    from engine.run_dir import RunDir
    from engine.settings import Settings

    if args.steps <= 0:
        raise LikenessError("--steps must be > 0")
    run_dir = RunDir(args.out / "run")
    if args.out.exists() and any(args.out.iterdir()) and run_dir.read_run() is None:
        raise LikenessError(f"--out {args.out} holds files that are not a likeness demo; choose another folder")
    started = time.perf_counter()
    progress = TerminalProgress()
    try:
        result = run_demo(args.out, Settings(), on_event=progress, steps=args.steps)
    finally:
        progress.close()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print(f"  photos:        {result.photos}")
    print(f"  sample grids:  {result.train.run_dir / 'samples'}")
    print(f"  LoRA:          {result.train.lora_path}")
    print(f"  run record:    {result.train.run_dir / 'run.json'}")
    print(f"  curves:        {result.train.run_dir / 'curves.png'}  (loss, likeness, memorisation)")
    for grid in result.generation.grids:
        print(f"  final grid:    {grid}  (lora_scale across, temperature down)")
    return 0
