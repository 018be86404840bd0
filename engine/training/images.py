"""Training images as SDXL sees them: RGB, shortest side resized, centre-cropped square."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import LikenessError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class TrainingImage:
    """One image at training size, with what SDXL's micro-conditioning wants to know about it."""

    path: Path
    pixels: object  # float32 tensor, 3 x H x W in [-1, 1]
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image


def image_folder(data: Path) -> Path:
    """The folder that holds the images: a prepared dataset's ``images/``, or ``data`` itself."""
    if not data.exists():
        raise LikenessError(f"--data {data} does not exist")
    if not data.is_dir():
        raise LikenessError(f"--data {data} is not a folder")
    from engine.prep import is_prepared_dataset

    # One definition of "a prepared dataset" for the trainer and prep alike.
    return data / "images" if is_prepared_dataset(data) else data


def list_image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LikenessError(f"--data {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_training_images(data: Path, resolution: int) -> tuple[list[TrainingImage], list[str]]:
    """Load every readable image; return them and one warning per file that could not be used."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    files = list_image_files(image_folder(data))
    images, warnings, enlarged = [], [], []
    for path in files:
        try:
            with Image.open(path) as opened:
                opened = ImageOps.exif_transpose(opened)
                rgb = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            warnings.append(f"skipped {path.name}: {error}")
            continue
        width, height = rgb.size
        if min(width, height) < resolution:
            enlarged.append(min(width, height))
        scale = resolution / min(width, height)
        resized_w, resized_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
        rgb = rgb.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
        left, top = (resized_w - resolution) // 2, (resized_h - resolution) // 2
        rgb = rgb.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        images.append(TrainingImage(path, pixels, (height, width), (top, left)))
    if not images:
        raise LikenessError(f"none of the {len(files)} image files in {data} could be read")
    if enlarged:
        warnings.append(enlargement_warning(len(enlarged), len(images), min(enlarged), resolution))
    return images, warnings


def enlargement_warning(enlarged: int, total: int, smallest: int, resolution: int) -> str:
    """One line for images smaller than the training size: a dataset prepared at 384 px and trained at
    1024 is enlarged 2.7x, softer than anything prep would have kept."""
    which = "all" if enlarged == total else f"{enlarged} of"
    return (f"{which} {total} training images are smaller than {resolution} px (the smallest {smallest} px): "
            f"training enlarges them up to {resolution / smallest:.1f}x, which softens the likeness; "
            f"--resolution {smallest // 64 * 64 or smallest} trains at their size")
