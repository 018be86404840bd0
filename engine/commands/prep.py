"""``likeness prep PHOTOS --out DATASET``: a folder or zip of photos into a training dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.commands.common import add_config_flag, build_config, flag, switch


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prep",
        help="turn a folder or zip of someone's photos into a training dataset of their face",
        description="Find the person in the most photos, crop their face square, reject photos of other people "
        "and blurry, badly exposed, too small or near-duplicate ones, and write DATASET/images, manifest.json, "
        "identity.json and report.png. Nothing under PHOTOS is ever modified.",
    )
    p.add_argument("photos", type=Path, metavar="PHOTOS", help="folder (searched recursively) or .zip export")
    p.add_argument("--out", type=Path, required=True, metavar="DATASET", help="dataset folder to create")
    switch(p, "--force", help="replace DATASET if it exists and is not empty")
    flag(p, "--reference", type=Path, metavar="PATH", help="photo or folder of the person to keep (overrides the guess)")
    flag(p, "--size", type=int, help="training image side in pixels (default 1024)")
    flag(p, "--framing", choices=["face", "head-and-shoulders"], help="how much of the person a crop shows (default face)")
    flag(p, "--face-fraction", dest="face_fraction", type=float,
         help="face width / crop width (default 0.4 for face, 0.25 for head-and-shoulders)")
    flag(p, "--max-upscale", dest="max_upscale", type=float, help="reject faces needing more enlargement (default 2)")
    flag(p, "--max-identity-distance", dest="max_identity_distance", type=float,
         help="distance to the identity beyond which a face is someone else (default 0.6)")
    flag(p, "--min-sharpness", dest="min_sharpness", type=float,
         help="reject faces blurrier than this variance of the Laplacian (default 40)")
    flag(p, "--min-brightness", dest="min_brightness", type=float, help="reject darker faces, 0-255 (default 45)")
    flag(p, "--max-brightness", dest="max_brightness", type=float, help="reject brighter faces, 0-255 (default 225)")
    flag(p, "--duplicate-distance", dest="duplicate_distance", type=int,
         help="perceptual-hash bits within which photos are one burst; -1 keeps all (default 6)")
    flag(p, "--detect-size", dest="detect_size", type=int,
         help="long side of the copy faces are searched in (default 1280)")
    flag(p, "--detector", choices=["auto", "hog", "cnn"], help="face detector (default auto: CNN where dlib has CUDA)")
    switch(p, "--caption", help="write images/NNNN.txt holding the instance prompt")
    flag(p, "--token", help='rare token naming the person (default "sks")')
    flag(p, "--class-word", dest="class_word", help='class noun after the token (default "person")')
    flag(p, "--workers", type=int, help="processes to use (default: every core)")
    p.add_argument("--server", metavar="URL",
                   help="submit to a running likeness service (likeness serve) and follow it; paths are the service's, relative to its LIKENESS_HOME")
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import LikenessError
    from engine.prep import PrepConfig, PrepProgress, prepare_photos

    config = build_config(PrepConfig, args)
    if args.server:
        from engine.service.client import run_remote

        return run_remote(args.server, "prep", config)
    if config.reference is not None and not config.reference.exists():
        raise LikenessError(f"--reference {config.reference} does not exist")

    def show(progress: PrepProgress) -> None:
        if sys.stderr.isatty():
            end = "\n" if progress.done == progress.total else ""
            print(f"\r{progress.stage} {progress.done}/{progress.total}", end=end, file=sys.stderr, flush=True)

    report = prepare_photos(config, on_progress=show)
    print(report.summary())
    return 0
