"""SDXL at full size on one GPU, no download: the real `likeness train` and `likeness generate`, measured.

    python -m bench.gpu_bench                   # on a CUDA machine; about 6 minutes on an H100-class card
    python -m bench.gpu_bench --skip compile    # leave out a variant

1. Builds a model with SDXL base 1.0's exact shapes (UNet 2.57 B parameters, CLIP-L and OpenCLIP-bigG,
   the 8x VAE) with random weights, on the GPU (seconds), and saves it as a diffusers folder in fp16
   (about 6.5 GB). `--scale` shrinks every width and depth, so the same code builds a small model on
   the CPU (the tests do), and `scale 1` is checked against SDXL's parameter counts.
2. Runs `likeness train` on it at 1024 px in a fresh process per variant: the savers chosen
   automatically (with sample grids), checkpointing on (the 8 GB-card setting, with sample grids),
   checkpointing by block at 0.25, 0.5 and 0.75 of full checkpointing's recomputation, batch 2 and 4, regional torch.compile, channels-last. Each run's run.json gives every phase's peak
   (torch.cuda.max_memory_allocated), the savers and the estimate it was planned with; its grids'
   JSON the seconds per grid image at the sample batch the plan chose (the whole grid of 6 without
   checkpointing, one image at a time with it).
3. Runs `likeness generate` (30 steps, 1024 px, guidance 5, after a warm-up image) and plain diffusers
   with the same LoRA fused, for s/image against s/image.
4. Counts the FLOPs of one LoRA training step (torch's FlopCounterMode on the meta device: forward and
   backward, no recomputation) for model-FLOP utilisation.

Writes bench/results/gpu-bench-<time>.json and prints a summary. Without a CUDA GPU it stops with one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.generate_bench import image_times
from bench.results_file import save_report

RESOLUTION = 1024

# Dense bf16 tensor-core peak, TFLOP/s, by a substring of torch's device name (vendors' data sheets,
# without sparsity). Unknown cards: --peak-tflops.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "A10": 125.0,
                    "4090": 165.0, "3090": 71.0, "L4": 121.0}

# name -> extra `likeness train` flags. The first is what a user gets; the second the small-card setting.
VARIANTS = {
    "auto": ["--steps", "30", "--sample-every", "30"],
    "checkpointing on": ["--steps", "10", "--sample-every", "10", "--gradient-checkpointing", "on"],
    # Checkpointing by block: the blocks that free the most for a quarter, half and three quarters of
    # full checkpointing's recomputation (a 12 GB card's auto plan recomputes 39 %).
    "checkpointing 0.25": ["--steps", "10", "--sample-every", "0", "--gradient-checkpointing", "0.25"],
    "checkpointing 0.5": ["--steps", "10", "--sample-every", "0", "--gradient-checkpointing", "0.5"],
    "checkpointing 0.75": ["--steps", "10", "--sample-every", "0", "--gradient-checkpointing", "0.75"],
    "batch 2": ["--steps", "8", "--sample-every", "0", "--batch-size", "2"],
    "batch 4": ["--steps", "8", "--sample-every", "0", "--batch-size", "4"],
    "compile": ["--steps", "12", "--sample-every", "0", "--compile"],
    "channels_last": ["--steps", "8", "--sample-every", "0", "--channels-last"],
}


def _scaled(value: int, scale: float, multiple: int = 1, minimum: int = 1) -> int:
    return max(minimum, int(round(value * scale / multiple)) * multiple)


def sdxl_configs(scale: float = 1.0) -> dict:
    """The constructor arguments of SDXL base 1.0's text encoders, UNet and VAE; ``scale`` < 1 shrinks
    widths and depths (keeping every divisibility the architecture needs), 1 is SDXL exactly."""
    unet_channels = [_scaled(c, scale, 32, 32) for c in (320, 640, 1280)]
    heads = [max(1, min(_scaled(h, scale), c // 32)) for h, c in zip((5, 10, 20), unet_channels, strict=True)]
    heads = [h if c % h == 0 else 1 for h, c in zip(heads, unet_channels, strict=True)]
    clip_l = dict(hidden_size=_scaled(768, scale, 64, 64), intermediate_size=_scaled(3072, scale, 64, 64),
                  num_hidden_layers=_scaled(12, scale, 1, 2), num_attention_heads=_scaled(12, scale),
                  max_position_embeddings=77, vocab_size=49408, projection_dim=_scaled(768, scale, 64, 64),
                  hidden_act="quick_gelu")
    clip_g = dict(hidden_size=_scaled(1280, scale, 64, 64), intermediate_size=_scaled(5120, scale, 64, 64),
                  num_hidden_layers=_scaled(32, scale, 1, 2), num_attention_heads=_scaled(20, scale),
                  max_position_embeddings=77, vocab_size=49408, projection_dim=_scaled(1280, scale, 64, 64),
                  hidden_act="gelu")
    for clip in (clip_l, clip_g):
        while clip["hidden_size"] % clip["num_attention_heads"]:
            clip["num_attention_heads"] -= 1
    time_dim = _scaled(256, scale, 8, 8)
    unet = dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(unet_channels),
        transformer_layers_per_block=tuple(_scaled(n, scale) for n in (1, 2, 10)),
        attention_head_dim=tuple(heads), use_linear_projection=True,
        cross_attention_dim=clip_l["hidden_size"] + clip_g["hidden_size"],
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=clip_g["projection_dim"] + 6 * time_dim,
    )
    vae = dict(block_out_channels=tuple(_scaled(c, scale, 32, 32) for c in (128, 256, 512, 512)),
               in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
               sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    return {"text_encoder": clip_l, "text_encoder_2": clip_g, "unet": unet, "vae": vae}


def build_models(scale: float = 1.0, device: str = "cpu", seed: int = 0) -> dict:
    """Text encoders, UNet and VAE with random weights, built on ``device`` (``meta``: shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.models.tiny import _byte_level_vocab

    configs = sdxl_configs(scale)
    vocab = _byte_level_vocab()
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=1)
    torch.manual_seed(seed)
    with torch.device(device):
        return {
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"], **special)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"], **special)),
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
        }


def save_model(target: Path, scale: float = 1.0, device: str = "cpu") -> float:
    """Build on ``device`` and save an fp16 diffusers folder at ``target``; return the seconds it took."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from engine.models.tiny import _byte_level_vocab

    started = time.perf_counter()
    models = build_models(scale, device)
    vocab = _byte_level_vocab()
    pipe = StableDiffusionXLPipeline(
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77),
        tokenizer_2=CLIPTokenizer(vocab=dict(vocab), merges=[], model_max_length=77, pad_token="!"),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading"),
        **{name: model.to(torch.float16) for name, model in models.items()},
    )
    pipe.save_pretrained(target, safe_serialization=True)
    del pipe, models
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return time.perf_counter() - started


def save_configs(target: Path, scale: float = 1.0) -> Path:
    """An SDXL diffusers folder with every config and both tokenizers but no weights (kilobytes): what
    engine.training.full_size_sim reads, as it would a hub base's config files."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    from engine.models.tiny import _byte_level_vocab

    configs = sdxl_configs(scale)
    vocab = _byte_level_vocab()
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=1)
    with torch.device("meta"):  # the models' own save_config writes exactly what from_config reads back
        UNet2DConditionModel(**configs["unet"]).save_config(target / "unet")
        AutoencoderKL(**configs["vae"]).save_config(target / "vae")
    for name in ("text_encoder", "text_encoder_2"):
        CLIPTextConfig(**configs[name], **special).save_pretrained(target / name)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                           steps_offset=1, timestep_spacing="leading").save_config(target / "scheduler")
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(target / "tokenizer")
    CLIPTokenizer(vocab=dict(vocab), merges=[], model_max_length=77, pad_token="!").save_pretrained(target / "tokenizer_2")
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1", "force_zeros_for_empty_prompt": True,
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (target / "model_index.json").write_text(json.dumps(index, indent=2))
    return target


@functools.cache
def step_flops(scale: float = 1.0, batch: int = 1, resolution: int = RESOLUTION, rank: int = 16) -> float:
    """FLOPs of one LoRA training step of the UNet (forward and backward, no recomputation), counted by
    torch on the meta device: no memory, no GPU."""
    import torch
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    from engine.models.lora_files import UNET_TARGET_MODULES

    unet = build_models(scale, "meta")["unet"]
    unet.requires_grad_(False)
    with torch.device("meta"):
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=UNET_TARGET_MODULES))
    latent, cross = resolution // 8, unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    meta = dict(device="meta")
    with FlopCounterMode(display=False) as counter:
        out = unet(torch.randn(batch, 4, latent, latent, **meta), torch.tensor([500] * batch, **meta),
                   encoder_hidden_states=torch.randn(batch, 77, cross, **meta),
                   added_cond_kwargs={"text_embeds": torch.randn(batch, pooled, **meta),
                                      "time_ids": torch.randn(batch, 6, **meta)}).sample
        out.float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def _recomputed_flops(savers: dict, batch: int) -> float:
    """The forward FLOPs a step recomputes with these savers at 1024 px (the per-block table's counts)."""
    from engine.training.memory_plan import block_table

    blocks = block_table()["unet_blocks"]
    names = savers.get("checkpointed_blocks")
    if names is None:  # a record from before checkpointing by block: all or nothing
        names = [b["name"] for b in blocks] if savers["gradient_checkpointing"] else []
    return batch * sum(b["flops"] + b["flops_quadratic"] for b in blocks if b["name"] in set(names))


def _peak_tflops(gpu: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in gpu.lower()), None)


def _likeness(args: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ likeness {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "engine", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"likeness {args[0]} failed (exit {done.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - started


def _train_variant(name: str, flags: list[str], model: Path, photos: Path, config: Path, work: Path,
                   env: dict, log: Path) -> dict:
    out = work / f"run-{name.replace(' ', '-')}"
    wall = _likeness(["train", "--base", str(model), "--data", str(photos), "--out", str(out), "--no-prep",
                      "--resolution", str(RESOLUTION), "--rank", "16", "--checkpoint-every", "0", "--where", "local",
                      "--config", str(config), *flags], env, log)
    record = json.loads((out / "run.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The first two steps warm up (and compile); sample-grid steps include the grid: both left out.
    timed = [r["seconds_per_step"] for r in rows[2:] if "sample_identity_score" not in r] or \
        [r["seconds_per_step"] for r in rows]
    batch = record["config"]["batch_size"]
    # The sample grids: the last one (the first warms up), per image, with the batch the plan chose; the
    # auto variant (no checkpointing) draws whole grids a pass, checkpointing on one image at a time.
    grids = [json.loads(p.read_text()) for p in sorted((out / "samples").glob("step-*.json"))]
    sampling = None
    if grids and "drawing_seconds" in grids[-1]:
        last = grids[-1]
        images = len(last["prompts"]) * len(last["seeds"])
        sampling = {"sample_batch": last["sample_batch"], "grid_images": images, "grids": len(grids),
                    "s_per_grid_image": round(last["drawing_seconds"] / images, 3),
                    "first_grid_s": grids[0]["drawing_seconds"]}
    return {"variant": name, "flags": flags, "wall_s": round(wall, 1), "batch_size": batch,
            "median_s_per_step": round(statistics.median(timed), 4),
            "s_per_image": round(statistics.median(timed) / batch, 4), "steps_timed": len(timed),
            "savers": record["savers"], "phase_peak_memory_gib": {
                k: round(v / 1024, 2) for k, v in (record.get("phase_peak_memory_mb") or {}).items()},
            "estimated_phase_peak_gib": record["estimated_phase_peak_gib"], "peak_memory_gib":
                round(record["peak_memory_mb"] / 1024, 2), "attention": record["attention"],
            "precision": record["precision"], "sampling": sampling, "run_dir": str(out)}


def _generate(model: Path, run: Path, work: Path, env: dict, log: Path) -> dict:
    out = work / "generated"
    wall = _likeness(["generate", "--lora", str(run), "--base", str(model), "--out", str(out), "--steps", "30",
                      "--guidance", "5", "--width", str(RESOLUTION), "--sweep", "seed=0,1,2,3,4,5"], env, log)
    return {"wall_s": round(wall, 1), **image_times(out / "images")}


def _diffusers_fused(model: Path, run: Path) -> dict:
    """Plain diffusers with the same LoRA fused: the speed generate must match."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=dtype).to("cuda")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(run))
    pipe.fuse_lora()
    seconds = []
    for seed in range(4):
        torch.cuda.synchronize()
        started = time.perf_counter()
        pipe("a photo of sks person", num_inference_steps=30, guidance_scale=5.0, width=RESOLUTION, height=RESOLUTION,
             generator=torch.Generator("cpu").manual_seed(seed))
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    del pipe
    torch.cuda.empty_cache()
    return {"s_per_image": round(statistics.median(seconds[1:]), 3), "images_timed": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", default="", help=f"comma-separated variants to leave out, of: {', '.join(VARIANTS)}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    parser.add_argument("--keep", type=Path, default=None, help="keep the model and runs in this folder")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("gpu_bench: torch is not installed") from None
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench: needs a CUDA GPU and torch sees none (this benchmark cannot run on the CPU)")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(VARIANTS)
    if unknown:
        raise SystemExit(f"gpu_bench: --skip {', '.join(sorted(unknown))}: unknown; variants: {', '.join(VARIANTS)}")

    started = time.perf_counter()
    gpu = torch.cuda.get_device_name()
    work = args.keep or Path(tempfile.mkdtemp(prefix="likeness-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    model = work / "sdxl-shaped"
    report: dict = {"benchmark": "gpu", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "gpu": gpu,
                    "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "torch": torch.__version__, "cuda": torch.version.cuda},
                    "resolution": RESOLUTION, "lora_rank": 16}
    try:
        # 1. The model, built on the GPU.
        if not (model / "model_index.json").is_file():
            report["build_s"] = round(save_model(model, 1.0, "cuda"), 1)
        report["model_bytes_on_disk"] = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        print(f"model: {report['model_bytes_on_disk'] / 1e9:.2f} GB in {report.get('build_s', 0):.0f} s", flush=True)

        # 2. Training, one process per variant.
        from engine.prep.demo_photos import make_demo_photos

        photos = work / "photos"
        if not photos.is_dir():
            make_demo_photos(photos, count=8)
        config = work / "bench.toml"
        # The default grid (3 prompts x 2 seeds): enough images for the sample batch to show its gain.
        config.write_text("sample_steps = 20\n")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIKENESS_HOME": str(work / "home")}
        peak = _peak_tflops(gpu, args.peak_tflops)
        runs = []
        for name, flags in VARIANTS.items():
            if name in skip:
                continue
            try:
                row = _train_variant(name, flags, model, photos, config, work, env, log)
            except SystemExit as failure:
                # One variant failing (a compile error, say) is a result too: record it and go on.
                runs.append({"variant": name, "flags": flags, "error": str(failure)[-2000:]})
                print(f"train {name:18s} FAILED: {str(failure).splitlines()[0]}", flush=True)
                continue
            flops = step_flops(1.0, row["batch_size"])
            row["tflop_per_step"] = round(flops / 1e12, 2)
            row["recomputed_tflop_per_step"] = round(_recomputed_flops(row["savers"], row["batch_size"]) / 1e12, 2)
            row["mfu"] = round(flops / row["median_s_per_step"] / (peak * 1e12), 4) if peak else None
            runs.append(row)
            phases = ", ".join(f"{k} {v:.2f}" for k, v in row["phase_peak_memory_gib"].items())
            grid = (f"  grids: {row['sampling']['s_per_grid_image']:.2f} s/image at sample batch "
                    f"{row['sampling']['sample_batch']}" if row["sampling"] else "")
            share = row["savers"].get("recompute_share")
            share = (1.0 if row["savers"]["gradient_checkpointing"] else 0.0) if share is None else share
            print(f"train {name:18s} {row['median_s_per_step']:.3f} s/step  MFU {row['mfu']}  "
                  f"savers: ckpt {share:.0%} of full, "
                  f"{row['savers']['optimizer']}  peaks GiB: {phases}{grid}", flush=True)
        report["train"] = runs

        # 3. Generation: likeness against plain diffusers with the LoRA fused.
        trained = [r for r in runs if "run_dir" in r]
        if not trained:
            raise SystemExit(f"gpu_bench: every training variant failed; see {log}")
        lora_run = Path(trained[0]["run_dir"])
        report["generate"] = _generate(model, lora_run, work, env, log)
        report["diffusers_fused"] = _diffusers_fused(model, lora_run)
        ratio = report["generate"]["s_per_image"] / report["diffusers_fused"]["s_per_image"]
        report["generate"]["vs_diffusers_fused"] = round(ratio, 3)
        print(f"generate: {report['generate']['s_per_image']:.2f} s/image, diffusers fused "
              f"{report['diffusers_fused']['s_per_image']:.2f} ({ratio:.2f}x)", flush=True)
        report["peak_tflops_bf16"] = peak
        report["reference"] = {"diffusers_train_dreambooth_lora_sdxl_s_per_step": 0.875,
                               "source": "issue 11, H200, same settings, checkpointing on"}
        report["total_s"] = round(time.perf_counter() - started, 1)
    finally:
        path = save_report("gpu-bench", report)
        print(f"saved {path} ({time.perf_counter() - started:.0f} s)")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
