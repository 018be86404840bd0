"""Training speed and memory, each memory saver on and off. Prints a table and saves JSON.

    python -m bench.train_bench                 # the tiny model through the real trainer (CPU or GPU)
    python -m bench.train_bench --sdxl-unet     # SDXL's full-size UNet, random weights, 1024 px (CUDA)

Each variant runs in its own process, so one variant's peak memory cannot leak into another's
(on the CPU the figure is the process's peak RSS, which never goes down). Figures are medians
over the timed steps; the first steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results_file import save_report

# name -> TrainConfig overrides. "default" is what `likeness train` does out of the box.
TINY_VARIANTS = {
    "default (savers chosen for the device: none here)": {},
    "every saver (8-bit Adam, checkpointing)": {"optimizer": "adamw8bit", "gradient_checkpointing": "on"},
    "checkpointing only": {"optimizer": "adamw", "gradient_checkpointing": "on"},
    "8-bit Adam only": {"optimizer": "adamw8bit", "gradient_checkpointing": "off"},
    "latents not cached": {"cache_latents": False},
}

SDXL_VARIANTS = {
    "default (8-bit Adam, checkpointing, xformers/SDPA, bf16)": {},
    "torch AdamW": {"optimizer": "adamw"},
    "no gradient checkpointing": {"gradient_checkpointing": False},
    "SDPA instead of xformers": {"attention": "sdpa"},
}

# stabilityai/stable-diffusion-xl-base-1.0's unet/config.json, the parts that shape the network.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


def _tiny_variant(overrides: dict, steps: int, resolution: int) -> dict:
    """Run the real trainer on the tiny model; return median s/step and peak memory."""
    from engine.prep.demo_photos import make_demo_photos
    from engine.settings import Settings
    from engine.training.config import TrainConfig
    from engine.training.trainer import train

    with tempfile.TemporaryDirectory() as scratch:
        photos = Path(scratch) / "photos"
        make_demo_photos(photos, count=8)
        config = TrainConfig(data=photos, out=Path(scratch) / "run", base="tiny", steps=steps,
                             resolution=resolution, rank=16, sample_every=0, checkpoint_every=0, **overrides)
        result = train(config, Settings())
        rows = [json.loads(line) for line in (config.out / "metrics.jsonl").read_text().splitlines()]
        record = json.loads((config.out / "run.json").read_text())
    timed = [r["seconds_per_step"] for r in rows[3:]] or [r["seconds_per_step"] for r in rows]
    return {"median_s_per_step": statistics.median(timed), "peak_memory_mb": result.peak_memory_mb,
            "memory_kind": record["memory_kind"], "device": record["device"], "gpu": record["gpu_name"],
            "attention": record["attention"], "precision": record["precision"], "steps_timed": len(timed)}


def _sdxl_variant(overrides: dict, steps: int, resolution: int) -> dict:
    """SDXL's UNet at full size with random weights: LoRA rank 16, batch 1, the trainer's savers."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from engine.models.lora_files import UNET_TARGET_MODULES

    if not torch.cuda.is_available():
        raise SystemExit("--sdxl-unet needs a CUDA GPU (a full-size SDXL UNet step on the CPU takes minutes)")
    opts = {"optimizer": "adamw8bit", "gradient_checkpointing": True, "attention": "auto", **overrides}
    device, dtype = "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_UNET).to(device, dtype)
    unet.requires_grad_(False)
    attention = "sdpa"
    if opts["attention"] == "auto":
        try:
            unet.enable_xformers_memory_efficient_attention()
            attention = "xformers"
        except Exception:  # xformers missing or built for another torch: SDPA it is
            attention = "sdpa"
    if opts["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=UNET_TARGET_MODULES))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if opts["optimizer"] == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    latent = resolution // 8
    batch = dict(
        sample=torch.randn(1, 4, latent, latent, device=device, dtype=dtype),
        timestep=torch.tensor([500], device=device),
        encoder_hidden_states=torch.randn(1, 77, 2048, device=device, dtype=dtype),
        added_cond_kwargs={"text_embeds": torch.randn(1, 1280, device=device, dtype=dtype),
                           "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]],
                                                    device=device, dtype=dtype)},
    )
    target = torch.randn(1, 4, latent, latent, device=device)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            prediction = unet(**batch, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - t0)
    return {"median_s_per_step": statistics.median(times), "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
            "memory_kind": "cuda_max_allocated", "device": device, "gpu": torch.cuda.get_device_name(),
            "attention": attention, "precision": str(dtype).removeprefix("torch."), "steps_timed": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdxl-unet", action="store_true", help="full-size SDXL UNet with random weights (CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="steps per variant (default 23 tiny, 13 SDXL)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 128 tiny, 1024 SDXL)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    variants = SDXL_VARIANTS if args.sdxl_unet else TINY_VARIANTS
    steps = args.steps or (10 if args.sdxl_unet else 23)
    resolution = args.resolution or (1024 if args.sdxl_unet else 128)

    if args.variant is not None:
        run = _sdxl_variant if args.sdxl_unet else _tiny_variant
        print(json.dumps(run(variants[args.variant], steps, resolution)))
        return

    results = []
    for name in variants:
        command = [sys.executable, "-m", "bench.train_bench", "--variant", name, "--steps", str(steps),
                   "--resolution", str(resolution)] + (["--sdxl-unet"] if args.sdxl_unet else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"variant {name!r} failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        results.append({"variant": name, **figures})
        print(f"{name:58s} {figures['median_s_per_step']:8.3f} s/step  {figures['peak_memory_mb']:9.0f} MB "
              f"({figures['memory_kind']})", flush=True)
    default = results[0]
    for row in results:
        row["s_per_step_vs_default"] = round(row["median_s_per_step"] / default["median_s_per_step"], 3)
        row["memory_vs_default"] = round(row["peak_memory_mb"] / default["peak_memory_mb"], 3)
    report = {
        "benchmark": "sdxl-unet" if args.sdxl_unet else "tiny-train",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "steps_per_variant": steps, "resolution": resolution, "lora_rank": 16, "batch_size": 1,
        "results": results,
    }
    path = save_report(report["benchmark"], report)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
