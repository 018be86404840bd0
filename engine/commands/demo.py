"""``likeness demo``: the whole pipeline on the built-in tiny model, on the CPU."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.events import EventSink, Log, ignore_events

if TYPE_CHECKING:
    from engine.generation.generator import GenerateResult
    from engine.settings import Settings
    from engine.training.trainer import TrainResult


@dataclass(frozen=True)
class DemoResult:
    photos: Path
    train: TrainResult
    generation: GenerateResult


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on the built-in tiny model (CPU, ~1 minute)",
                              description="Make demo photos, train the tiny SDXL-architecture model for a few "
                                          "steps with sample grids, then generate a lora_scale x temperature grid.")
    p.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR", help="where everything goes (default demo-out)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from engine.errors import LikenessError
    from engine.progress import TerminalProgress
    from engine.settings import Settings
    from engine.training.run_dir import RunDir

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


def run_demo(out: Path, settings: Settings, on_event: EventSink = ignore_events, *, steps: int = 30,
             resolution: int = 128) -> DemoResult:
    """Demo photos, a short tiny-model run with sample grids, then a lora_scale x temperature grid."""
    from engine.generation.generator import GenerateConfig, generate
    from engine.prep.demo_photos import make_demo_photos
    from engine.training.config import TrainConfig
    from engine.training.trainer import train

    photos = out / "photos"
    make_demo_photos(photos)
    on_event(Log(f"demo photos: {photos}"))
    run_dir = out / "run"
    result = train(
        TrainConfig(data=photos, out=run_dir, base="tiny", steps=steps, resolution=resolution, rank=8,
                    lr=1e-3, sample_every=10, sample_steps=10, checkpoint_every=10, force=True),
        settings, on_event=on_event,
    )
    generation = generate(
        GenerateConfig(lora=run_dir, steps=20, out=out / "generate", force=True,
                       sweeps={"lora_scale": [0.0, 0.5, 1.0], "temperature": [0.0, 0.5, 1.0]}),
        settings, on_event=on_event,
    )
    return DemoResult(photos, result, generation)
