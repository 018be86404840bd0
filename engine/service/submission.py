"""From a typed config sent to the service to a stored job: where its paths may point, and clashes.

Paths in a submitted config are on the service's side, relative to LIKENESS_HOME, and must stay
inside it: inputs anywhere in it, a training run at runs/NAME, a dataset at datasets/NAME,
generations inside runs/. They are stored absolute, so the worker does not depend on its cwd.
The checks here answer at submit time what the engine would otherwise find out minutes later
in a worker (a missing dataset, a finished run in the way).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel

from engine.generation.generator import GenerateConfig
from engine.models.base_model import REPO_ID
from engine.placement.decision import Where, for_the_cloud
from engine.prep.config import PrepConfig
from engine.service import storage
from engine.service.catalog import DATASETS, RUNS, UPLOADS, check_name, relative
from engine.service.errors import Conflict, InvalidField, StorageError, TooLarge
from engine.service.models import Job, JobKind, name_problem
from engine.service.queue import JobQueue
from engine.service.security import path_problem
from engine.training.config import TrainConfig
from engine.training.run_dir import RunDir


def _plain(value: Path | str, field: str) -> None:
    """Refuse a path no file can have before any file system call raises on it."""
    problem = path_problem(str(value))
    if problem is not None:
        raise InvalidField(field, problem)


def _inside(home: Path, value: Path, field: str) -> Path:
    _plain(value, field)
    real_home = Path(os.path.realpath(home))
    target = Path(os.path.realpath(value if value.is_absolute() else real_home / value))
    if not target.is_relative_to(real_home):
        raise InvalidField(field, f"{value} is outside LIKENESS_HOME (paths are relative to {home})")
    return target


def _named_folder(home: Path, value: Path, field: str, parent: str) -> Path:
    """A path that must be exactly HOME/parent/NAME."""
    target = _inside(home, value, field)
    if target.parent != Path(os.path.realpath(home)) / parent:
        raise InvalidField(field, f"must be {parent}/NAME (a plain name), got {value}")
    problem = name_problem(target.name)
    if problem:  # the rule the listing and GET /runs/NAME read by: what is queued can be read back
        raise InvalidField(field, f"{parent}/NAME: {problem}")
    return target


def _not_in_use(queue: JobQueue, run_dir: str) -> None:
    if run_dir in queue.active_run_dirs():
        raise Conflict(f"{run_dir} is in use by a queued or running job")


def _dataset_not_in_use(queue: JobQueue, home: Path, dataset: Path) -> None:
    """Replacing a dataset under a train job that is queued or running would train it on the new one."""
    real = Path(os.path.realpath(dataset))
    for state in ("running", "queued"):
        for job in queue.list(state=state, kind="train"):
            data = job.config.get("data")
            if isinstance(data, str) and Path(os.path.realpath(data)).is_relative_to(real):
                raise Conflict(f"{relative(home, real)} is used by {state} job {job.id}; replace it once that job "
                               "has ended, or prepare the photos under another name")


def _not_empty(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _readable(home: Path, roots: tuple[Path, ...], value: Path, field: str) -> Path:
    """An input prep only reads: inside LIKENESS_HOME, or inside one of the configured photo roots."""
    _plain(value, field)
    if value.is_absolute():
        target = Path(os.path.realpath(value))
        if any(target.is_relative_to(os.path.realpath(root)) for root in roots):
            return target
        if not target.is_relative_to(os.path.realpath(home)):
            # Say what is allowed and how to widen it, not only where the path is not.
            allowed = ", ".join(str(r) for r in (home, *roots))
            raise InvalidField(field, f"{value} is outside the folders this engine may read photos from "
                                      f"({allowed}); add its folder to LIKENESS_PHOTO_ROOTS (separated by "
                                      f"'{os.pathsep}') and restart the engine, or copy the photos into {home}")
    return _inside(home, value, field)


def allowed_base(spec: str | None, home: Path, roots: tuple[Path, ...], field: str) -> str | None:
    """A base model the engine may load: 'tiny', a Hugging Face repo id, or a diffusers folder or
    .safetensors file inside LIKENESS_HOME or a models root, stored as its real path.

    A path outside is refused with the same words whether or not it exists: the answer must not
    tell what lies outside."""
    if spec is None or spec == "tiny":
        return spec
    if not spec.strip():
        raise InvalidField(field, "is empty: give a Hugging Face repo id, a model inside LIKENESS_HOME, or 'tiny'")
    _plain(spec, field)
    path = Path(spec)
    real_home = Path(os.path.realpath(home))
    candidate = path if path.is_absolute() else real_home / path
    # As resolve_base decides: a path that exists wins over a repo id of the same spelling.
    named_like_a_path = spec.startswith((".", "~", "/")) or spec.endswith((".safetensors", ".ckpt"))
    if not named_like_a_path and REPO_ID.match(spec) and not candidate.exists():
        return spec
    real = Path(os.path.realpath(candidate))
    allowed = (home, *roots)
    if not any(real.is_relative_to(os.path.realpath(root)) for root in allowed):
        listed = ", ".join(str(root) for root in allowed)
        raise InvalidField(field, f"{spec} is outside the allowed roots ({listed}); add one with "
                                  "LIKENESS_MODEL_ROOTS")
    if not real.exists():
        raise InvalidField(field, f"no model folder or file at {relative(home, real)}")
    return str(real)


def accept(kind: JobKind, config: BaseModel, home: Path, queue: JobQueue, photo_roots: tuple[Path, ...] = (),
           where: Where = "auto", gpu: str | None = None, *, model_roots: tuple[Path, ...] = (),
           reserve_mb: float = 0) -> Job:
    """Check a submission, make its paths absolute, and queue it (train jobs: to run where `where` says).

    `model_roots`: folders beyond LIKENESS_HOME a base model may come from; `reserve_mb`: free space a
    training run must leave under LIKENESS_HOME."""
    if isinstance(config, TrainConfig):
        stored, run_dir = _train(config, home, queue, model_roots, reserve_mb)
    elif isinstance(config, PrepConfig):
        stored, run_dir = _prep(config, home, queue, photo_roots)
    else:
        assert isinstance(config, GenerateConfig)
        stored, run_dir = _generate(config, home, model_roots)
    return queue.submit(kind, stored.model_dump(mode="json"), run_dir, where, gpu)


def _train(config: TrainConfig, home: Path, queue: JobQueue, model_roots: tuple[Path, ...] = (),
           reserve_mb: float = 0) -> tuple[TrainConfig, str]:
    base = allowed_base(config.base, home, model_roots, "config.base")
    data = _inside(home, config.data, "config.data")
    if not data.is_dir():
        raise InvalidField("config.data", f"no dataset or photo folder at {relative(home, data)}")
    if relative(home, data) in queue.active_run_dirs():  # a prep job is writing it now
        raise Conflict(f"{relative(home, data)} is being prepared by a queued or running job; train once it is done")
    out = _named_folder(home, config.out, "config.out", RUNS)
    run_dir = relative(home, out)
    _not_in_use(queue, run_dir)
    run = RunDir(out)
    if config.resume:
        if not run.checkpoint_steps():
            raise InvalidField("config.resume", f"{run_dir} has no checkpoint to resume from")
    elif _not_empty(out) and not config.force:
        record = run.read_run()
        if record is None:
            raise Conflict(f"{run_dir} holds files that are not a likeness run; choose another name")
        if record.get("status") == "done":
            raise Conflict(f"{run_dir} already holds a finished run; set force to overwrite it")
        raise Conflict(f"{run_dir} holds an unfinished run; resume its job, or set resume or force")
    problem = storage.room_problem(config, home, reserve_mb)
    if problem is not None:
        raise StorageError(problem)
    return config.model_copy(update={"data": data, "out": out, "base": base}), run_dir


def _prep(config: PrepConfig, home: Path, queue: JobQueue, photo_roots: tuple[Path, ...]) -> tuple[PrepConfig, str]:
    photos = _readable(home, photo_roots, config.photos, "config.photos")
    if not photos.exists():
        raise InvalidField("config.photos", f"no folder or .zip at {relative(home, photos)}")
    update: dict[str, Any] = {"photos": photos}
    if config.reference is not None:
        update["reference"] = _readable(home, photo_roots, config.reference, "config.reference")
        if not update["reference"].exists():
            raise InvalidField("config.reference", f"no photo or folder at {relative(home, update['reference'])}")
    out = _named_folder(home, config.out, "config.out", DATASETS)
    run_dir = relative(home, out)
    _not_in_use(queue, run_dir)
    _dataset_not_in_use(queue, home, out)
    if _not_empty(out) and not config.force:
        raise Conflict(f"{run_dir} already exists; set force to replace it")
    return config.model_copy(update={**update, "out": out}), run_dir


def _generate(config: GenerateConfig, home: Path, model_roots: tuple[Path, ...] = ()) -> tuple[GenerateConfig, str]:
    update: dict[str, Any] = {"base": allowed_base(config.base, home, model_roots, "config.base")}
    run_dir = None
    if config.lora is not None:
        lora = update["lora"] = _inside(home, config.lora, "config.lora")
        if not lora.exists():
            raise InvalidField("config.lora", f"no run or LoRA file at {relative(home, lora)}")
        if lora.is_dir():
            if RunDir(lora).read_run() is None:
                raise InvalidField("config.lora", f"{relative(home, lora)} is not a run (no run.json)")
            run_dir = relative(home, lora)
        _check_loras(config.model_copy(update=update), home)
    runs = Path(os.path.realpath(home)) / RUNS
    if config.out is not None:
        out = update["out"] = _inside(home, config.out, "config.out")
        if not out.is_relative_to(runs) or out == runs:
            raise InvalidField("config.out", f"must be inside {RUNS}/, got {config.out}")
        run_dir = relative(home, out)
    elif run_dir is None or not Path(home, run_dir).resolve().is_relative_to(runs):
        raise InvalidField("config.out", f"required unless config.lora is a run in {RUNS}/")
    return config.model_copy(update=update), run_dir


def _check_loras(config: GenerateConfig, home: Path) -> None:
    """A damaged LoRA (NaN weights, a module without its up weights, an absurd header) is refused
    at submit, as the CLI refuses it before loading."""
    from engine.errors import LikenessError
    from engine.generation.generator import lora_files_to_load
    from engine.models.lora_validation import validate_lora

    try:
        for path in lora_files_to_load(config):
            try:
                validate_lora(path)
            except LikenessError as error:
                raise LikenessError(str(error).replace(str(path), relative(home, path))) from None
    except LikenessError as error:
        raise InvalidField("config.lora", str(error)) from None


def resume_config(job: Job, home: Path, where: Where | None = None, run_id: str | None = None) -> dict[str, Any]:
    """The config of a train job's next attempt: from the newest checkpoint, or over if it has none;
    moved to the cloud when `where` is modal.

    `run_id`: the run this job last started (its newest "started" event says); when its folder now
    holds another run (a later job replaced it), resuming would overwrite that run: a 409."""
    if job.kind != "train":
        raise Conflict(f"job {job.id} is a {job.kind} job; only train jobs resume (submit it again)")
    config = TrainConfig.model_validate(job.config)
    if run_id is not None:
        current = RunDir(config.out).read_run() or {}
        if isinstance(current.get("run_id"), str) and current["run_id"] != run_id:
            raise Conflict(f"{job.run_dir} now holds another run (started {current.get('started_at', '?')}), not "
                           f"job {job.id}'s: resuming would overwrite it; train job {job.id}'s config under a new name")
    # A --force attempt that never took a step put back the run it was replacing: that run's
    # checkpoints are not this job's to resume from (job.progress is the job's newest step, any attempt).
    own_run = not config.force or job.progress is not None
    has_checkpoint = own_run and bool(RunDir(config.out).checkpoint_steps())
    # No checkpoint yet (stopped while loading or before the first one): the same run from step 0.
    again = config.model_copy(update={"resume": has_checkpoint, "force": not has_checkpoint})
    if where == "modal":
        again = for_the_cloud(again)
    return again.model_dump(mode="json")


@contextlib.contextmanager
def upload_lock(home: Path, name: str) -> Iterator[None]:
    """One upload to a name at a time, from its checks until its prep is queued; a second is a 409."""
    uploads = home / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    lock = os.open(uploads / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another upload to {UPLOADS}/{name} is in progress; try again when it is done") from None
        yield
    finally:
        os.close(lock)  # and with it the lock


def store_upload(home: Path, name: str, files: list[tuple[str | None, BinaryIO]], max_files: int) -> Path:
    """Write uploaded photos to uploads/NAME, replacing an earlier upload of that name only once all of
    this one is written; every file is kept, under a name of its own (hold `upload_lock`)."""
    check_name(name, "dataset")
    if not files:
        raise InvalidField("files", "no files uploaded")
    if len(files) > max_files:
        raise TooLarge(f"{len(files)} files uploaded; the limit is {max_files}")
    uploads = home / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    # Written beside its final place (same file system), then swapped in with renames.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=uploads))
    folder, old = uploads / name, uploads / f".{name}.old"
    try:
        for stored, (_, handle) in zip(upload_names([filename for filename, _ in files]), files, strict=True):
            with (staging / stored).open("xb") as out:
                shutil.copyfileobj(handle, out)
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.rename(folder, old)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def upload_names(filenames: list[str | None]) -> list[str]:
    """A distinct, plain file name for each uploaded file, in order.

    Only the last segment of the client's name, in plain characters (never a path of theirs),
    bounded well under the file system's limit with its extension kept; a name already given gets
    a number before the extension (`a.jpg`, `sub/a.jpg` -> `a.jpg`, `a-2.jpg`), so no file is lost."""
    used: set[str] = set()
    names = []
    for index, filename in enumerate(filenames):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "").name).lstrip(".") or f"photo-{index}"
        stem, dot, ext = safe.rpartition(".") if "." in safe else (safe, "", "")
        stem, ext = stem[:150] or "photo", ext[:16]
        candidate, n = f"{stem}{dot}{ext}", 2
        while candidate.lower() in used:
            candidate, n = f"{stem}-{n}{dot}{ext}", n + 1
        used.add(candidate.lower())
        names.append(candidate)
    return names


def _prep_config(photos: Path, name: str, options: dict[str, Any]) -> PrepConfig:
    from pydantic import ValidationError

    for reserved in ("photos", "out"):
        if reserved in options:
            raise InvalidField(f"options.{reserved}", "is set by the request itself")
    try:
        return PrepConfig(photos=photos, out=Path(DATASETS) / name, **options)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "options"
        raise InvalidField(f"options.{field}", first["msg"].removeprefix("Value error, ")) from None


def _dataset_name(name: str) -> None:
    problem = name_problem(name)
    if problem:
        raise InvalidField("name", problem)


def accept_dataset(name: str, photos: Path, options: dict[str, Any], home: Path, queue: JobQueue,
                   photo_roots: tuple[Path, ...] = ()) -> Job:
    """Queue prep of `photos` (inside LIKENESS_HOME or a photo root) into datasets/NAME."""
    _dataset_name(name)
    return accept("prep", _prep_config(photos, name, options), home, queue, photo_roots)


def accept_upload(name: str, files: list[tuple[str | None, BinaryIO]], options: str | None, home: Path,
                  queue: JobQueue, max_files: int) -> Job:
    """Store uploaded photos in uploads/NAME, then queue their prep into datasets/NAME."""
    import json

    _dataset_name(name)
    try:
        values = json.loads(options) if options else {}
    except json.JSONDecodeError as error:
        raise InvalidField("options", f"not JSON: {error.msg}") from None
    except RecursionError:  # Python's parser recurses per level: a 100,000-deep value is no PrepConfig
        raise InvalidField("options", "nested too deeply to be PrepConfig fields") from None
    if not isinstance(values, dict):
        raise InvalidField("options", "must be a JSON object of PrepConfig fields")
    config = _prep_config(Path(UPLOADS) / name, name, values)
    # The clashes are checked before the upload replaces anything of an earlier one.
    out = home / DATASETS / name
    with upload_lock(home, name):
        _not_in_use(queue, relative(home, out))
        _dataset_not_in_use(queue, home, out)
        if _not_empty(out) and not config.force:
            raise Conflict(f"{DATASETS}/{name} already exists; set force in options to replace it")
        store_upload(home, name, files, max_files)
        return accept("prep", config, home, queue)
