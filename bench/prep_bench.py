"""Time `prepare_photos` on N synthetic phone photos made from scikit-image's astronaut.

    python -m bench.prep_bench [--count 48] [--workers N] [--width 4032 --height 3024]
    python -m bench.prep_bench --count 1559 --library /tmp/library   # the issue's target, timed whole
    python -m bench.prep_bench --photos ~/Pictures/export             # your own photos

Each photo places a different crop, zoom, rotation and colour of the astronaut on a phone-size
canvas with a textured background and sensor noise, saved as a quality-90 JPEG, so every photo
is accepted and none is a near-duplicate. Prep runs twice: cold (empty cache) and warm (rerun).
Prints the figures and saves them to bench/results/prep-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from bench.results_file import save_report

LIBRARY_SIZE = 1559  # the target: this many 12 MP photos in under 5 minutes on 2 cores


def make_photo(index: int, size: tuple[int, int]) -> Image.Image:
    """One synthetic phone photo of the astronaut, different from every other index."""
    from skimage import data

    rng = np.random.default_rng([0, index])
    astronaut = Image.fromarray(data.astronaut())
    left, top = int(rng.integers(0, 90)), int(rng.integers(0, 40))
    person = astronaut.crop((left, top, left + 420, top + 460))
    if index % 2:
        person = ImageOps.mirror(person)
    person = person.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BICUBIC, fillcolor=(110, 110, 110))
    person = ImageEnhance.Color(person).enhance(float(rng.uniform(0.6, 1.3)))
    width, height = size
    # Face about 8-15% of the photo's width: a typical phone portrait.
    scale = float(rng.uniform(0.9, 1.6)) * height / 460 * 0.75
    person = person.resize((round(420 * scale), round(460 * scale)), Image.Resampling.BICUBIC)
    background = rng.integers(0, 255, (height // 64, width // 64, 3), dtype=np.uint8)
    canvas = Image.fromarray(background).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(8))
    x = int(rng.integers(0, max(1, width - person.width)))
    y = int(rng.integers(0, max(1, height - person.height)))
    canvas.paste(person, (x, y))
    # Uneven light over the scene (window light, shade): without it, photos of one person filling
    # the frame share their coarse structure, and a perceptual hash calls a third of them duplicates.
    light = rng.uniform(0.6, 1.2, (4, 5)).astype(np.float32)
    light = np.asarray(Image.fromarray(light, "F").resize(size, Image.Resampling.BICUBIC))[..., None]
    noise = rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    pixels = np.asarray(canvas, dtype=np.float32) * light + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def save_photo(index: int, size: tuple[int, int], folder: Path) -> None:
    make_photo(index, size).save(folder / f"IMG_{index:04d}.jpg", quality=90)


def make_library(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` synthetic photos in `folder`, made on every core; the ones already there are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (folder / f"IMG_{i:04d}.jpg").exists()]
    started = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(save_photo, missing, [size] * len(missing), [folder] * len(missing), chunksize=4))
    print(f"made {len(missing)} photos of {size[0]}x{size[1]} in {time.perf_counter() - started:.1f} s "
          f"({count - len(missing)} were there)")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the prep pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_milliseconds(paths: list[Path], size: int) -> dict[str, float]:
    """Median milliseconds of each step of one photo's analysis and crop, run inline."""

    from engine.prep.analysis import encode_png
    from engine.prep.config import FRAMING_FACE_FRACTION, FRAMING_VERTICAL_OFFSET, PrepConfig
    from engine.prep.cropping import face_crop_box, render_crop, scale_box
    from engine.prep.faces import detection_copy, encode_faces, find_faces
    from engine.prep.loading import decode_photo

    defaults = PrepConfig(photos=Path("."), out=Path("."))
    detect_size, max_pixels = defaults.detect_size, defaults.max_pixels
    times: dict[str, list[float]] = {}

    def timed(stage: str, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = work(*args, **kwargs)
        times.setdefault(stage, []).append((time.perf_counter() - started) * 1000)
        return result

    find_faces(Image.new("RGB", (64, 64)), detect_size=detect_size, detector="hog")  # load dlib's models
    for path in paths:
        data = path.read_bytes()
        decoded = timed("decode for detection", decode_photo, data, max_pixels=max_pixels, min_long_side=960)
        copy = detection_copy(decoded.image, detect_size)
        boxes = timed("find faces (HOG)", find_faces, copy, detect_size=detect_size, detector="hog")
        timed("encode faces", encode_faces, copy, boxes)
        if not boxes:
            continue
        box = scale_box(boxes[0], decoded.full_size[0] / copy.width)
        crop_box = face_crop_box(box, decoded.full_size, FRAMING_FACE_FRACTION["face"], FRAMING_VERTICAL_OFFSET["face"])
        needed = round(max(decoded.full_size) * min(1.0, size / (crop_box[2] - crop_box[0])))
        full = timed("decode for crop", decode_photo, data, max_pixels=max_pixels, min_long_side=needed)
        crop = timed("crop and resize", render_crop, full.image, scale_box(crop_box, full.scale), size)
        timed("encode PNG", encode_png, crop)
    return {stage: round(statistics.median(values), 1) for stage, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="synthetic photos to prepare (default 48)")
    parser.add_argument("--width", type=int, default=4032, help="photo width (default 4032: 12 MP)")
    parser.add_argument("--height", type=int, default=3024, help="photo height (default 3024)")
    parser.add_argument("--workers", type=int, help="prep processes (default: every core)")
    parser.add_argument("--size", type=int, default=1024, help="training image size (default 1024)")
    parser.add_argument("--photos", type=Path, help="time prep on these photos (your own library) instead")
    parser.add_argument("--library", type=Path,
                        help="keep the synthetic photos in this folder, and reuse them on later runs "
                             "(--count 1559 times the issue's target directly instead of projecting it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="prep-bench-") as scratch:
        root = Path(scratch)
        os.environ["LIKENESS_HOME"] = str(root / "home")  # a cold cache, not the user's
        from engine.prep import PrepConfig, prepare_photos

        photos = args.photos or args.library or root / "photos"
        if args.photos is None:
            make_library(photos, args.count, (args.width, args.height))
        config = PrepConfig(photos=photos, out=root / "dataset", size=args.size, workers=args.workers, force=True)
        cpu_before = cpu_seconds()
        cold = prepare_photos(config)
        cold_cpu = cpu_seconds() - cpu_before
        print(cold.summary())
        warm = prepare_photos(config)
        stages = stage_milliseconds(sorted(p for p in photos.rglob("*.jp*g") if p.is_file())[:8], args.size)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {
        "benchmark": "prep",
        "timestamp": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": cores,
        "workers": args.workers or cores,
        "photos": cold.found,
        "source": str(args.photos) if args.photos else "synthetic",
        "photo_size": None if args.photos else [args.width, args.height],
        "training_size": args.size,
        "accepted": cold.accepted,
        "rejected": cold.rejected,
        "cold_seconds": round(cold.seconds, 2),
        "cold_images_per_second": round(cold.images_per_second, 2),
        "warm_seconds": round(warm.seconds, 2),
        "warm_images_per_second": round(warm.images_per_second, 2),
        "projected_seconds_for_1559": round(LIBRARY_SIZE / cold.images_per_second, 1),
        # Every process's CPU time (workers' start-up included) over the photos: what the
        # projection for two whole cores rests on, whatever this machine's cores deliver.
        "cold_cpu_seconds_per_photo": round(cold_cpu / cold.found, 3),
        "projected_seconds_for_1559_on_2_whole_cores": round(LIBRARY_SIZE * cold_cpu / cold.found / 2, 1),
        "stage_median_ms": stages,
    }
    path = save_report("prep", result)
    print(
        f"cold {result['cold_images_per_second']} images/s, warm {result['warm_images_per_second']} images/s; "
        f"at this rate {LIBRARY_SIZE} photos take {result['projected_seconds_for_1559'] / 60:.1f} min "
        f"({result['workers']} workers on {cores} cores)"
    )
    print(
        f"{result['cold_cpu_seconds_per_photo']} CPU-s per photo: {LIBRARY_SIZE} photos on 2 whole cores "
        f"take {result['projected_seconds_for_1559_on_2_whole_cores'] / 60:.1f} min"
    )
    print("median ms per photo: " + ", ".join(f"{stage} {ms}" for stage, ms in stages.items()))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
