"""`likeness generate` against plain diffusers with the same LoRA fused: seconds per image. Saves JSON.

    python -m bench.generate_bench                      # the tiny model, 6 images at 512 px, 20 steps
    python -m bench.generate_bench --resolution 256 --rounds 3

The target is generate at most 1.05x plain diffusers' time per image. Plain diffusers only denoises;
generate also scores each picture's face against the person and writes it as a PNG with its sidecar,
which at 1024 px costs the CPU most of a second an image. What a user waits per image is one saved
picture to the next (PNG times), so that is what is timed; the pipeline's own seconds (the sidecars')
are reported beside it. A 2-step tiny run on the demo photos gives the LoRA and, through prep, the
identity the faces are scored against. Rounds alternate the two, so a neighbour's load falls on both;
the first image of each round is a warm-up and not timed. On a GPU the same comparison is part of
bench.gpu_bench at SDXL's real size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench.results_file import save_report

PROMPT = "a photo of sks person"


def _tiny_run(work: Path) -> Path:
    from engine.prep.demo_photos import make_demo_photos
    from engine.settings import Settings
    from engine.training.config import TrainConfig
    from engine.training.trainer import train

    make_demo_photos(work / "photos", count=4)
    train(TrainConfig(data=work / "photos", out=work / "run", base="tiny", steps=2, resolution=128, rank=8,
                      sample_every=0, checkpoint_every=0), Settings())
    return work / "run"


def image_times(images: Path) -> dict:
    """How long a `likeness generate` folder's pictures took: what a user waits per image is one saved
    picture to the next (the pipeline, plus the face scoring and PNG writing that overlap the next
    image's denoising); the sidecars' seconds are the pipeline's alone. Medians; the first image is
    a warm-up, a start point only."""
    import json

    saved = sorted(p.stat().st_mtime for p in images.glob("*.png"))
    pipeline = [json.loads(p.read_text())["seconds"] for p in sorted(images.glob("*.json"))]
    between = [later - earlier for earlier, later in zip(saved, saved[1:], strict=False)]
    return {"s_per_image": round(statistics.median(between), 3),
            "pipeline_s_per_image": round(statistics.median(pipeline[1:]), 3),
            "images_timed": len(between), "first_image_s": pipeline[0]}


def _likeness(run: Path, out: Path, resolution: int, steps: int, images: int) -> dict:
    from engine.generation.generator import GenerateConfig, generate
    from engine.settings import Settings

    generate(GenerateConfig(lora=run, prompt=PROMPT, steps=steps, width=resolution, out=out, force=True,
                            sweeps={"seed": list(range(images))}), Settings())
    return image_times(out / "images")


def _diffusers(run: Path, resolution: int, steps: int, images: int) -> float:
    """Plain diffusers, LoRA fused, the same scheduler, prompt and seeds: median seconds per image."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from engine.models.tiny import ensure_tiny_model
    from engine.settings import Settings

    pipe = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model(Settings().models_dir))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(run))
    pipe.fuse_lora()
    seconds = []
    for seed in range(images):
        started = time.perf_counter()
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, width=resolution, height=resolution,
             generator=torch.Generator("cpu").manual_seed(seed))
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512, help="pixels (default 512)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--images", type=int, default=6, help="images a round, the first untimed (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each (default 2)")
    args = parser.parse_args()

    import torch

    from engine.quiet import quiet_libraries

    quiet_libraries()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="generate-bench-") as folder:
        work = Path(folder)
        run = _tiny_run(work)
        for index in range(args.rounds):
            times = _likeness(run, work / f"out-{index}", args.resolution, args.steps, args.images)
            ours, pipeline = times["s_per_image"], times["pipeline_s_per_image"]
            plain = _diffusers(run, args.resolution, args.steps, args.images)
            rounds.append({"likeness_s_per_image": round(ours, 3), "likeness_pipeline_s_per_image": round(pipeline, 3),
                           "diffusers_fused_s_per_image": round(plain, 3)})
            print(f"round {index + 1}: likeness {ours:.2f} s/image (pipeline {pipeline:.2f}), "
                  f"diffusers fused {plain:.2f}", flush=True)
    ours = statistics.median(r["likeness_s_per_image"] for r in rounds)
    plain = statistics.median(r["diffusers_fused_s_per_image"] for r in rounds)
    print(f"likeness generate {ours:.2f} s/image, plain diffusers fused {plain:.2f}: {ours / plain:.2f}x "
          "(target: at most 1.05x)")
    report = {
        "benchmark": "generate", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "model": "tiny", "resolution": args.resolution, "steps": args.steps, "images_per_round": args.images,
        "rounds": rounds, "likeness_s_per_image": ours, "diffusers_fused_s_per_image": plain,
        "likeness_vs_diffusers_fused": round(ours / plain, 3),
    }
    print(f"saved {save_report('generate', report)}")


if __name__ == "__main__":
    main()
