"""The whole pipeline on the built-in tiny model, on the CPU, in a couple of minutes.

Photos come from scikit-image's bundled astronaut portrait (public domain, NASA): crops, flips
and colour changes stand in for a person's photo library. The tiny model has random weights,
so the pictures are noise; what the demo shows is every stage working end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.events import EventSink, Log, ignore_events
from engine.generate import GenerateConfig, GenerateResult, generate
from engine.settings import Settings
from engine.train_config import TrainConfig
from engine.train_sdxl import TrainResult, train


@dataclass(frozen=True)
class DemoResult:
    photos: Path
    train: TrainResult
    generation: GenerateResult


def make_demo_photos(folder: Path, count: int = 8, seed: int = 0) -> list[Path]:
    """Write ``count`` varied photos of the astronaut's face into ``folder``."""
    import numpy as np
    from PIL import Image, ImageEnhance
    from skimage import data

    rng = np.random.default_rng(seed)
    portrait = Image.fromarray(data.astronaut())  # 512 x 512
    face_left, face_top, face_right, face_bottom = 170, 30, 320, 200  # the face, with some margin
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        # Every crop keeps the whole face, placed differently in each, as in real photos of a person.
        size = int(rng.integers(260, 420))
        left = int(rng.integers(max(0, face_right - size), min(face_left, 512 - size) + 1))
        top = int(rng.integers(max(0, face_bottom - size), min(face_top, 512 - size) + 1))
        photo = portrait.crop((left, top, left + size, top + size))
        if index % 2:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        photo = ImageEnhance.Color(photo).enhance(float(rng.uniform(0.6, 1.4)))
        photo = ImageEnhance.Brightness(photo).enhance(float(rng.uniform(0.8, 1.2)))
        path = folder / f"astronaut-{index:02d}.jpg"
        photo.save(path, quality=92)
        paths.append(path)
    return paths


def run_demo(out: Path, settings: Settings, on_event: EventSink = ignore_events, *, steps: int = 30,
             resolution: int = 128) -> DemoResult:
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
