"""Sample grids one image at a time against the whole grid per denoising pass. Prints medians, saves JSON.

    python -m bench.sample_bench                  # the tiny model, 3 prompts x 2 seeds, 128 px, 25 steps
    python -m bench.sample_bench --repeats 9 --resolution 64

The grid is drawn as the trainer draws it (engine.training.sample_grid.render_images with the prompts encoded
beforehand and each image decoded by itself), on whatever device torch picks first (CUDA, else the
CPU). Batch 1 and the whole grid alternate in each repeat, so a neighbour's load on a shared machine
falls on both; a warm-up grid of each comes first and is not timed. One torch thread by default (the
figure in engine.training.eta is for one thread too). The pictures of the two are
compared too: batching must not change them beyond rounding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time

from bench.results_file import save_report

PROMPTS = ["a photo of sks person", "sks person on a beach", "a painting of sks person"]
SEEDS = (0, 1)


def _grid_drawer(resolution: int, steps: int):
    """A function drawing the grid at a given batch, returning its pixels; on the tiny model."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline

    from engine.models.tiny import ensure_tiny_model
    from engine.settings import Settings
    from engine.training.sample_grid import PromptEmbeds, decode_latents, render_images

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model(Settings().models_dir)).to(device)
    pipe.set_progress_bar_config(disable=True)
    embeds = []
    for prompt in PROMPTS:
        hidden, _, pooled, _ = pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=False)
        embeds.append(PromptEmbeds(hidden, pooled))

    def draw(batch: int):
        rows = render_images(pipe, PROMPTS, SEEDS, resolution=resolution, steps=steps, embeds=embeds,
                             decode=lambda latents: decode_latents(pipe.vae, latents, None), batch=batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return np.stack([np.asarray(image, dtype=np.int16) for row in rows for image in row])

    return draw, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed grids per batch (default 5)")
    parser.add_argument("--resolution", type=int, default=128, help="pixels (default 128)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25, the trainer's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    args = parser.parse_args()
    import torch

    # On a shared machine, more threads than free cores leave OpenMP's threads waiting on one another:
    # a first try at two threads on two busy cores took 60 s for a grid that takes 7 s alone.
    torch.set_num_threads(args.threads)

    draw, device = _grid_drawer(args.resolution, args.steps)
    images = len(PROMPTS) * len(SEEDS)
    batches = (1, images)
    pixels = {batch: draw(batch) for batch in batches}  # warm-up, and the pictures to compare
    seconds: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(args.repeats):
        for batch in batches:
            started = time.perf_counter()
            draw(batch)
            seconds[batch].append(time.perf_counter() - started)
    results = []
    for batch in batches:
        median = statistics.median(seconds[batch])
        results.append({"sample_batch": batch, "median_s_per_grid": round(median, 3),
                        "s_per_grid_image": round(median / images, 4),
                        "seconds": [round(s, 3) for s in seconds[batch]]})
        print(f"sample batch {batch}: {median:6.2f} s a grid (median of {args.repeats}), "
              f"{median / images:.3f} s an image", flush=True)
    ratio = results[1]["median_s_per_grid"] / results[0]["median_s_per_grid"]
    difference = int(abs(pixels[images] - pixels[1]).max())
    print(f"whole grid / one at a time: {ratio:.2f}x the time; pictures differ by at most {difference}/255")
    report = {
        "benchmark": "sample-grid",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": device,
                    "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
        "model": "tiny", "prompts": len(PROMPTS), "seeds": len(SEEDS), "resolution": args.resolution,
        "sample_steps": args.steps, "repeats": args.repeats, "results": results,
        "whole_grid_vs_one_at_a_time": round(ratio, 3), "max_abs_pixel_difference": difference,
    }
    path = save_report("sample-grid", report)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
