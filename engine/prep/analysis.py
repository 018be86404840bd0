"""The per-photo work that runs in the process pool: read, decode, find faces, measure, crop.

Everything here is a top-level function of picklable arguments, so it runs the same inline
or in a spawned worker.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.prep.cache import ANALYSIS_VERSION, PrepCache, settings_key, write_atomically
from engine.prep.cropping import render_crop, scale_box
from engine.prep.faces import detection_copy, encode_faces, find_faces
from engine.prep.loading import decode_photo
from engine.prep.manifest import Box, FaceFound, PhotoAnalysis
from engine.prep.quality import face_brightness, face_sharpness, perceptual_hash
from engine.prep.sources import PhotoSource, SourceRejected, read_source

THUMB_SIDE = 160
DETECT_SLACK = 0.75


@dataclass(frozen=True)
class AnalysisSettings:
    """The knobs an analysis depends on; together with the content hash, its cache key."""

    detect_size: int
    detector: str
    max_pixels: int
    cache_root: Path

    @property
    def key(self) -> str:
        """Cache key of analyses made with these settings."""
        return settings_key(
            version=ANALYSIS_VERSION,
            detect_size=self.detect_size,
            detector=self.detector,
            max_pixels=self.max_pixels,
        )


@dataclass(frozen=True)
class AnalysedPhoto:
    """A source and what was learnt from it."""

    source: PhotoSource
    analysis: PhotoAnalysis
    cached: bool


def analyse_source(source: PhotoSource, settings: AnalysisSettings) -> AnalysedPhoto:
    """Analyse one file, or fetch the analysis of identical bytes from the cache."""
    try:
        data = read_source(source)
    except SourceRejected as rejected:
        return AnalysedPhoto(source, PhotoAnalysis(error=rejected.reason, detail=rejected.detail), cached=False)
    sha256 = hashlib.sha256(data).hexdigest()
    cache = PrepCache(settings.cache_root)
    cached = cache.load_analysis(sha256, settings.key)
    if cached is not None and (cached.error is not None or cache.thumb_path(sha256).exists()):
        return AnalysedPhoto(source, cached, cached=True)
    analysis = analyse_bytes(data, sha256, settings, cache)
    cache.save_analysis(analysis, settings.key)
    return AnalysedPhoto(source, analysis, cached=False)


def analyse_bytes(data: bytes, sha256: str, settings: AnalysisSettings, cache: PrepCache) -> PhotoAnalysis:
    """Decode at detection size; find, encode and measure every face; hash; thumbnail."""
    try:
        # A 4032 px photo decodes at 1/4 scale (1008 px) for a 1280 detection size: within
        # DETECT_SLACK of the size asked for, and half the decoding, resizing and HOG work of 1/2.
        decoded = decode_photo(
            data, max_pixels=settings.max_pixels, min_long_side=round(settings.detect_size * DETECT_SLACK)
        )
    except SourceRejected as rejected:
        return PhotoAnalysis(sha256=sha256, error=rejected.reason, detail=rejected.detail)
    copy = detection_copy(decoded.image, settings.detect_size)
    boxes = find_faces(copy, detect_size=settings.detect_size, detector=settings.detector)
    encodings = encode_faces(copy, boxes)
    to_full = decoded.full_size[0] / copy.width
    faces = [
        FaceFound(
            box=scale_box(box, to_full),
            encoding=[round(float(v), 6) for v in encoding],
            sharpness=round(face_sharpness(copy, box), 2),
            brightness=round(face_brightness(copy, box), 2),
        )
        for box, encoding in zip(boxes, encodings, strict=True)
    ]
    thumb = copy.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    write_atomically(cache.thumb_path(sha256), _jpeg(thumb))
    return PhotoAnalysis(
        sha256=sha256,
        width=decoded.full_size[0],
        height=decoded.full_size[1],
        faces=faces,
        # The hash looks at 32x32 pixels; taking them from the thumbnail is 20x cheaper.
        phash=perceptual_hash(thumb),
    )


@dataclass(frozen=True)
class CropTask:
    """Cut one accepted photo's training image into the cache."""

    source: PhotoSource
    crop_box: Box
    long_side: int
    size: int
    max_pixels: int
    out_path: Path
    thumb_path: Path


def render_crop_task(task: CropTask) -> Path:
    """Decode only as many pixels as the crop needs, cut, resize, save PNG and a thumbnail."""
    data = read_source(task.source)
    side = task.crop_box[2] - task.crop_box[0]
    needed = math.ceil(task.long_side * min(1.0, task.size / side))
    decoded = decode_photo(data, max_pixels=task.max_pixels, min_long_side=needed)
    crop = render_crop(decoded.image, scale_box(task.crop_box, decoded.scale), task.size)
    write_atomically(task.out_path, encode_png(crop))
    crop.thumbnail((THUMB_SIDE, THUMB_SIDE))
    write_atomically(task.thumb_path, _jpeg(crop))
    return task.out_path


def encode_png(image: Image.Image) -> bytes:
    """A training image as PNG, fast: prep is bound by CPU, and the dataset is read once per run.

    Pillow always tries all five PNG row filters; libpng (through imagecodecs) with the Up filter
    alone and zlib's run-length strategy writes a 1024 px photo crop in half the time of Pillow's
    fastest settings, for a file about 4% bigger (bench/prep_bench.py times it).
    """
    import imagecodecs

    return imagecodecs.png_encode(np.asarray(image), level=imagecodecs.PNG.COMPRESSION.SPEED,
                                  strategy=imagecodecs.PNG.STRATEGY.RLE, filter=imagecodecs.PNG.FILTER.UP)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()
