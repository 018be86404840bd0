"""``likeness train``: DreamBooth + LoRA on SDXL from a folder of photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.commands.common import add_config_flag, build_config, flag, switch
from engine.commands.where import add_where_flags, cpu_line, decide_for, train_where


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a LoRA of one person on SDXL",
                              description="DreamBooth + LoRA training of SDXL on photos of one person.")
    flag(p, "--data", type=Path, metavar="DIR", help="a prepared dataset (likeness prep) or a folder of photos")
    switch(p, "--prep", help="prepare a raw photo folder first into RUN_DIR/dataset (default on); "
                             "--no-prep uses the images as they are, resized and centre-cropped")
    flag(p, "--out", type=Path, metavar="RUN_DIR", help="run directory for the LoRA, samples, checkpoints, metrics")
    flag(p, "--base", metavar="MODEL",
         help="HF repo id (default stabilityai/stable-diffusion-xl-base-1.0), diffusers folder, .safetensors, or tiny")
    flag(p, "--steps", type=int, help="optimizer steps (default 500)")
    flag(p, "--rank", type=int, help="LoRA rank (default 16)")
    flag(p, "--alpha", type=float, help="LoRA alpha (default: the rank)")
    flag(p, "--lr", type=float, help="learning rate (default 1e-4)")
    flag(p, "--lr-scheduler", dest="lr_scheduler", choices=["constant", "constant_with_warmup", "cosine", "linear"],
         help="learning-rate schedule (default constant)")
    flag(p, "--lr-warmup-steps", dest="lr_warmup_steps", type=int, help="warm-up steps (default 0)")
    flag(p, "--resolution", type=int, help="training size in pixels, a multiple of 8 (default 1024)")
    flag(p, "--batch-size", dest="batch_size", type=int, help="images per step (default 1)")
    flag(p, "--seed", type=int, help="seed for data order, noise and timesteps (default 0)")
    flag(p, "--token", help="rare token that comes to mean this person (default sks)")
    flag(p, "--class-word", dest="class_word", help="man, woman, person... (default person)")
    flag(p, "--sample-every", dest="sample_every", type=int, help="sample grid every N steps, 0 = never (default 100)")
    flag(p, "--sample-steps", dest="sample_steps", type=int, help="denoising steps per sample image (default 25)")
    flag(p, "--checkpoint-every", dest="checkpoint_every", type=int,
         help="resumable checkpoint every N steps, 0 = never (default 250)")
    flag(p, "--checkpoints-keep", dest="checkpoints_keep", type=int, help="newest checkpoints kept for resuming (default 2); sample steps' are always kept")
    switch(p, "--resume", help="continue from the newest checkpoint in --out")
    switch(p, "--force", help="overwrite a finished run in --out")
    switch(p, "--train-text-encoder", help="also train LoRA on both text encoders")
    switch(p, "--prior-preservation", help="regularise with class images drawn by the base model")
    flag(p, "--num-class-images", dest="num_class_images", type=int, help="class images (default 100)")
    flag(p, "--mixed-precision", dest="mixed_precision", choices=["auto", "no", "fp16", "bf16"],
         help="auto = bf16/fp16 on CUDA, fp32 on CPU")
    flag(p, "--optimizer", choices=["auto", "adamw8bit", "adamw"],
         help="auto (default): torch AdamW unless the run needs 8-bit AdamW's smaller state to fit")
    flag(p, "--gradient-checkpointing", dest="gradient_checkpointing", metavar="auto|on|off|FRACTION", nargs="?",
         const="on", help="recompute activations in backward to save memory, block by block (every block: 2.2x "
                          "slower a step); auto (default): as few blocks as the run needs to fit the device's free "
                          "memory; a FRACTION 0-1: the blocks that free most while recomputing at most that share "
                          "of what every block would")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const="off",
                   default=argparse.SUPPRESS, help="same as --gradient-checkpointing off")
    p.add_argument("--compile", dest="compile_unet", default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction,
                   help="torch.compile the UNet's transformer blocks (CUDA; off: not yet measured faster)")
    switch(p, "--channels-last", help="channels-last UNet weights (off: not yet measured faster)")
    flag(p, "--attention", choices=["auto", "xformers", "sdpa"], help="auto = xformers when installed on CUDA")
    switch(p, "--cache-latents", help="VAE-encode each image once before the loop (default on)")
    flag(p, "--device", help="auto, cpu, cuda or cuda:N (default auto)")
    add_where_flags(p)
    p.add_argument("--exact", action="store_true",
                   help="with --dry-run: also run the training at full size on a simulated card (no GPU, no weights: "
                        "the base's config files only; minutes on the CPU) and print each phase's peak")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="with --dry-run: print the whole plan as one JSON object")
    p.add_argument("--server", metavar="URL",
                   help="submit to a running likeness service (likeness serve) and follow it; paths are the service's, relative to its LIKENESS_HOME")
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import LikenessError
    from engine.progress import TerminalProgress
    from engine.settings import Settings
    from engine.training.config import TrainConfig

    for required in ("data", "out"):
        if required not in vars(args) and args.config is None:
            raise LikenessError(f"--{required} is required")
    config = build_config(TrainConfig, args)
    if args.vram is not None and not args.dry_run:
        raise LikenessError("--vram plans for a card this machine may not have: it goes with --dry-run")
    if (args.exact or args.as_json) and not args.dry_run:
        raise LikenessError(f"{'--exact' if args.exact else '--json'} goes with --dry-run")
    if args.server:
        from engine.service.client import run_remote

        return run_remote(args.server, "train", config)
    config, decision = decide_for(config, args)
    if args.dry_run:
        from engine.commands.dry_run import print_dry_run

        print_dry_run(config, decision, Settings(), exact=args.exact, as_json=args.as_json)
        return 0
    on_cpu = cpu_line(config, decision)
    progress = TerminalProgress(header=f"likeness: {on_cpu}" if on_cpu else None)
    try:
        result = train_where(config, decision, args, Settings(), on_event=progress)
    finally:
        progress.close()
    print(f"trained {result.steps} steps in {result.wall_time_s:.0f} s, final loss {result.final_loss:.4f}")
    print(f"LoRA: {result.lora_path}")
    if config.sample_every:
        print(f"samples: {result.run_dir / 'samples'}")
    return 0
