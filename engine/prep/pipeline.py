"""`prepare_photos`: a folder or zip of someone's photos in, a training dataset of their face out.

The story: find the files; analyse each in a process pool (or fetch the analysis of identical
bytes from the cache); choose the identity; judge every photo; cut the accepted crops (pool
again, cached too); write the dataset into a temp folder and rename it into place.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import LikenessError
from engine.prep.analysis import AnalysedPhoto, AnalysisSettings, CropTask, analyse_source, render_crop_task
from engine.prep.cache import PrepCache, settings_key
from engine.prep.config import PrepConfig
from engine.prep.cropping import face_crop_box, upscale_needed
from engine.prep.faces import resolve_detector
from engine.prep.identity import Identity, cluster_identity, reference_identity, save_identity
from engine.prep.loading import decode_photo
from engine.prep.manifest import (
    Manifest,
    NothingAccepted,
    PhotoEntry,
    PrepProgress,
    PrepReport,
    Reason,
    size_hint,
)
from engine.prep.quality import near_duplicates
from engine.prep.report import SheetTile, contact_sheet
from engine.prep.sources import PhotoSource, SourceRejected, find_photos, read_source
from engine.settings import Settings

CROP_VERSION = 1
ProgressCallback = Callable[[PrepProgress], None]


def prepare_photos(config: PrepConfig, on_progress: ProgressCallback | None = None, *,
                   settings: Settings | None = None) -> PrepReport:
    """Build the dataset `config.out` from the photos in `config.photos`. Never writes under PHOTOS.

    Raises `LikenessError` for bad paths and when no photo is accepted (nothing is written then).
    """
    started = time.perf_counter()
    photos = config.photos.expanduser().resolve()
    out = config.out.expanduser().resolve()
    _check_paths(photos, out, config.force)
    sources, skipped = find_photos(photos)
    if not sources:
        raise LikenessError(f"no photos found in {photos}")
    cache = PrepCache((settings or Settings()).home / "cache" / "prep")
    settings = AnalysisSettings(
        detect_size=config.detect_size,
        detector=resolve_detector(config.detector),
        max_pixels=config.max_pixels,
        cache_root=cache.root,
    )

    with _pool(_worker_count(config, len(sources))) as pool:
        analysed: list[AnalysedPhoto] = _map(
            pool, analyse_source, [(s, settings) for s in sources], "analysing", on_progress
        )
        identity = _choose_identity(config, analysed, settings)
        entries = _judge(config, analysed, identity)
        crops = _cut_crops(config, pool, analysed, entries, cache, on_progress)

    accepted = [i for i, e in enumerate(entries) if e.status == "accepted"]
    rejected = Counter(str(e.reason) for e in entries if e.status == "rejected")
    hint = size_hint(entries, config.size, config.max_upscale)
    if not accepted:
        reasons = ", ".join(f"{n} {reason}" for reason, n in rejected.most_common())
        raise NothingAccepted(f"no photo was accepted out of {len(entries)} ({reasons})", entries, hint)

    manifest = Manifest(
        photos=str(photos),
        size=config.size,
        instance_prompt=config.instance_prompt,
        config=config.model_dump(mode="json", exclude={"force", "workers"}),
        identity_photos=identity.photos if identity else 0,
        identity_source=identity.source if identity else "cluster",
        accepted=len(accepted),
        rejected=dict(sorted(rejected.items())),
        entries=entries,
    )
    assert identity is not None  # at least one photo matched it
    _write_dataset(config, out, manifest, identity, crops, cache, on_progress)
    cached = sum(a.cached for a in analysed)
    return PrepReport(
        dataset=out,
        found=len(sources),
        skipped=skipped,
        accepted=len(accepted),
        rejected=dict(rejected),
        cached=cached,
        seconds=time.perf_counter() - started,
        identity_photos=identity.photos,
        hint=hint,
    )


def is_prepared_dataset(path: Path | str) -> bool:
    """Whether `path` is a dataset `prepare_photos` finished writing."""
    path = Path(path)
    return (path / "manifest.json").is_file() and (path / "identity.json").is_file() and (path / "images").is_dir()


def _check_paths(photos: Path, out: Path, force: bool) -> None:
    if not photos.exists():
        raise LikenessError(f"{photos} does not exist")
    if photos.is_dir() and out.is_relative_to(photos):
        raise LikenessError(f"--out {out} is inside PHOTOS; prep never writes there")
    if photos.is_relative_to(out):
        raise LikenessError(f"--out {out} contains PHOTOS; choose another folder")
    if out.exists() and not out.is_dir():
        raise LikenessError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LikenessError(f"--out {out} exists and is not empty; use --force to replace it")


def _worker_count(config: PrepConfig, jobs: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(config.workers or available, jobs))


@contextmanager
def _pool(workers: int) -> Iterator[Executor | None]:
    """A process pool, or None (run inline) for one worker.

    Spawned, not forked: the service and the TUI call prep from threaded processes, where a fork
    can copy a held lock.
    """
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_one_thread_each)
    ok = False
    try:
        yield pool
        ok = True
    finally:
        if not ok:
            # Cancelled or failed: a worker still busy with one file must not keep this process
            # (and the job) alive after it; the pool has no public way to end its workers.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=ok, cancel_futures=True)


def _one_thread_each() -> None:
    # Each core has a worker already: torch's own threads (face encodings) would fight over them.
    os.environ["OMP_NUM_THREADS"] = "1"


def _map(
    pool: Executor | None,
    function: Callable[..., Any],
    calls: Sequence[tuple],
    stage: str,
    on_progress: ProgressCallback | None,
) -> list[Any]:
    """`function(*call)` for every call, results in call order; an exception becomes the result."""
    results: list[Any] = [None] * len(calls)
    if on_progress:
        on_progress(PrepProgress(stage, 0, len(calls)))
    if pool is None:
        for i, call in enumerate(calls):
            results[i] = _guarded(function, call)
            if on_progress:
                on_progress(PrepProgress(stage, i + 1, len(calls)))
        return results
    # A window of calls in flight, not all of them at once: 20,000 files must not mean 20,000 pickled
    # calls and futures held together. A few per worker keeps every worker busy.
    window = 4 * max(1, getattr(pool, "_max_workers", 1))
    pending = iter(enumerate(calls))
    futures: dict[Future, int] = {}
    done = 0

    def submit_more() -> None:
        for i, call in itertools.islice(pending, window - len(futures)):
            futures[pool.submit(function, *call)] = i

    submit_more()
    while futures:
        finished, _ = wait(futures, return_when=FIRST_COMPLETED)
        for future in finished:
            error = future.exception()
            results[futures.pop(future)] = error if error is not None else future.result()
            done += 1
            if on_progress:
                on_progress(PrepProgress(stage, done, len(calls)))
        submit_more()
    return results


def _guarded(function: Callable[..., Any], call: tuple) -> Any:
    try:
        return function(*call)
    except Exception as error:  # one bad file must not end the run; the caller records it
        return error


def _choose_identity(
    config: PrepConfig, analysed: list[AnalysedPhoto | BaseException], settings: AnalysisSettings
) -> Identity | None:
    for i, item in enumerate(analysed):
        if isinstance(item, BaseException):
            # The analysis itself blew up (not a decoding error, which is recorded as a reason).
            raise LikenessError(f"analysing photo {i} failed: {item}") from item
    if config.reference is not None:
        centroid, photos = reference_identity(
            _reference_images(config.reference, config.max_pixels, config.detect_size),
            config.detect_size,
            settings.detector,
        )
        source = "reference"
    else:
        found = cluster_identity(
            [[np.asarray(f.encoding) for f in item.analysis.faces] for item in analysed]  # type: ignore[union-attr]
        )
        if found is None:
            return None
        centroid, photos = found
        source = "cluster"
    return Identity(
        centroid=[round(float(v), 6) for v in centroid],
        tolerance=config.max_identity_distance,
        photos=photos,
        source=source,
        detect_size=config.detect_size,
    )


def _reference_images(reference: Path, max_pixels: int, detect_size: int) -> list:
    reference = reference.expanduser()
    if reference.is_file() and reference.suffix.lower() != ".zip":
        sources = [PhotoSource(name=reference.name, path=reference)]
    else:
        sources, _ = find_photos(reference)
    images = []
    for source in sources:
        try:
            images.append(decode_photo(read_source(source), max_pixels=max_pixels, min_long_side=detect_size).image)
        except SourceRejected:
            continue
    if not images:
        raise LikenessError(f"no readable photo in the reference {reference}")
    return images


def _judge(config: PrepConfig, analysed: list[AnalysedPhoto], identity: Identity | None) -> list[PhotoEntry]:
    """Each photo's verdict; the first failed check is its reason."""
    entries: list[PhotoEntry] = []
    candidates: list[int] = []
    for item in analysed:
        a = item.analysis
        entry = PhotoEntry(
            source=item.source.name,
            sha256=a.sha256,
            status="rejected",
            width=a.width,
            height=a.height,
            faces=len(a.faces),
            phash=a.phash,
        )
        entries.append(entry)
        if a.error is not None:
            entry.reason, entry.detail = a.error, a.detail
            continue
        if not a.faces or identity is None:
            entry.reason = Reason.NO_FACE
            continue
        distances = identity.distances([f.encoding for f in a.faces])
        best = int(distances.argmin())
        face = a.faces[best]
        entry.face_box = face.box
        entry.identity_distance = round(float(distances[best]), 4)
        entry.sharpness = face.sharpness
        entry.brightness = face.brightness
        if distances[best] > config.max_identity_distance:
            entry.reason = Reason.DIFFERENT_PERSON
            entry.detail = f"distance {distances[best]:.2f} > {config.max_identity_distance}"
            continue
        assert a.width is not None and a.height is not None
        box = face_crop_box(face.box, (a.width, a.height), config.crop_face_fraction, config.crop_vertical_offset)
        entry.crop_box = box
        entry.upscale = round(upscale_needed(box, config.size), 3)
        if entry.upscale > config.max_upscale:
            entry.reason = Reason.TOO_SMALL
            entry.detail = f"face {face.box[2] - face.box[0]} px would need {entry.upscale:.1f}x"
        # Exposure before sharpness: a washed-out or murky face has weak edges and would
        # otherwise be called blurry.
        elif face.brightness < config.min_brightness:
            entry.reason = Reason.TOO_DARK
            entry.detail = f"brightness {face.brightness:.0f} < {config.min_brightness:g}"
        elif face.brightness > config.max_brightness:
            entry.reason = Reason.TOO_BRIGHT
            entry.detail = f"brightness {face.brightness:.0f} > {config.max_brightness:g}"
        elif face.sharpness < config.min_sharpness:
            entry.reason = Reason.BLURRY
            entry.detail = f"sharpness {face.sharpness:.0f} < {config.min_sharpness:g}"
        else:
            entry.status, entry.reason = "accepted", None
            candidates.append(len(entries) - 1)

    # Of each burst of near-identical photos, keep the sharpest (the earliest on a tie).
    best_first = sorted(candidates, key=lambda i: (-(entries[i].sharpness or 0.0), i))
    hashes = [entries[i].phash or "0" for i in best_first]
    for duplicate, keeper in near_duplicates(hashes, config.duplicate_distance).items():
        entry = entries[best_first[duplicate]]
        entry.status, entry.reason = "rejected", Reason.DUPLICATE
        entry.detail = f"of {entries[best_first[keeper]].source}"
    return entries


def _cut_crops(
    config: PrepConfig,
    pool: Executor | None,
    analysed: list[AnalysedPhoto],
    entries: list[PhotoEntry],
    cache: PrepCache,
    on_progress: ProgressCallback | None,
) -> dict[int, CropTask]:
    """The training image of every accepted photo, cut into the cache unless already there."""
    tasks: dict[int, CropTask] = {}
    for i, entry in enumerate(entries):
        if entry.status != "accepted":
            continue
        assert entry.sha256 and entry.crop_box and entry.width and entry.height
        key = settings_key(version=CROP_VERSION, box=entry.crop_box, size=config.size)
        out_path = cache.crop_path(entry.sha256, key)
        tasks[i] = CropTask(
            source=analysed[i].source,
            crop_box=entry.crop_box,
            long_side=max(entry.width, entry.height),
            size=config.size,
            max_pixels=config.max_pixels,
            out_path=out_path,
            thumb_path=out_path.with_suffix(".jpg"),
        )
    missing = [i for i, t in tasks.items() if not (t.out_path.exists() and t.thumb_path.exists())]
    results = _map(pool, render_crop_task, [(tasks[i],) for i in missing], "cropping", on_progress)
    for i, result in zip(missing, results, strict=True):
        if isinstance(result, BaseException):
            # The file changed or broke between analysis and cropping.
            entries[i].status = "rejected"
            entries[i].reason = Reason.CORRUPT
            entries[i].detail = f"cropping failed: {result}"
            del tasks[i]
    return tasks


def _write_dataset(
    config: PrepConfig,
    out: Path,
    manifest: Manifest,
    identity: Identity,
    crops: dict[int, CropTask],
    cache: PrepCache,
    on_progress: ProgressCallback | None,
) -> None:
    """Write everything into a temp folder beside OUT, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.prep-", dir=out.parent))
    try:
        # mkdtemp makes its folder 0700; renamed into place, the dataset would keep that. It gets the
        # mode any folder made here gets (0755 under the usual umask), like the images in it.
        temp.chmod(0o777 & ~_umask())
        images = temp / "images"
        images.mkdir()
        digits = max(4, len(str(len(crops))))
        accepted_tiles, rejected_tiles = [], []
        number = 0
        for i, entry in enumerate(manifest.entries):
            if entry.status == "accepted":
                number += 1
                name = f"{number:0{digits}d}"
                shutil.copyfile(crops[i].out_path, images / f"{name}.png")
                entry.image = f"images/{name}.png"
                if config.caption:
                    (images / f"{name}.txt").write_text(config.instance_prompt + "\n")
                accepted_tiles.append(SheetTile(crops[i].thumb_path, f"{name}\n{entry.source}"))
                if on_progress:
                    on_progress(PrepProgress("writing", number, len(crops)))
            else:
                thumb = cache.thumb_path(entry.sha256) if entry.sha256 else None
                rejected_tiles.append(SheetTile(thumb, f"{entry.reason}\n{entry.source}"))
        manifest.write(temp / "manifest.json")
        save_identity(identity, temp)
        contact_sheet(accepted_tiles, rejected_tiles).save(temp / "report.png", compress_level=3)
        _move_into_place(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it too, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(temp: Path, out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(temp, out)
        return
    # --force: the old dataset stays whole until the new one is in place.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(temp, out)
    shutil.rmtree(old, ignore_errors=True)

