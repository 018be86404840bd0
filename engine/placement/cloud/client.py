"""The seam between likeness and Modal's cloud: a small protocol, and the one class that talks to Modal.

``ModalExecutor`` only ever calls a ``ModalClient``. ``ModalCloud`` is the real one (modal imported
when first used, so the CLI starts without it); the tests pass an in-process stand-in that keeps the
volumes in a temporary folder and runs the App's function bodies with ``.local()``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Protocol

from engine.errors import LikenessError


class RemoteCall(Protocol):
    """One running training function."""

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event message from the container, or None when none came within ``timeout`` seconds."""

    def stop(self) -> None:
        """Ask the run to stop at its next step boundary (it saves run.json and commits)."""

    def cancel(self) -> None:
        """Terminate the function now; what it committed stays in the volume."""

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The function's return value; raises what it raised."""

    def close(self) -> None:
        """Release the app and queues behind the call."""


class ModalClient(Protocol):
    """What ModalExecutor needs from the cloud: three volumes' worth of files and one function."""

    def has_dataset(self, key: str) -> bool:
        """True when the dataset with this content hash is already uploaded (completely)."""

    def upload_dataset(self, key: str, folder: Path) -> None:
        """Upload ``folder`` as datasets/<key>, with a marker written last so half an upload never counts."""

    def replace_run(self, run_key: str, folder: Path | None) -> None:
        """Empty runs/<run_key>; then, with ``folder``, upload it there (a local run to resume in the cloud)."""

    def start_training(self, request: dict[str, Any], gpu: str) -> RemoteCall:
        """Start the train function on ``gpu``."""

    def read_run_file(self, run_key: str, relative: str) -> bytes:
        """One file of runs/<run_key>."""

    def download_run(self, run_key: str, into: Path) -> None:
        """Copy runs/<run_key> into the local folder ``into``, overwriting what is there."""


DATASET_COMPLETE = ".likeness-uploaded"


def modal_error(error: BaseException, gpu: str | None = None) -> LikenessError:
    """One line for each way Modal fails that a user can act on. Never includes tokens."""
    import modal.exception as mx

    name = type(error).__name__
    if isinstance(error, mx.AuthError) or "token" in str(error).lower() and "invalid" in str(error).lower():
        return LikenessError("Modal rejected the token: run `modal token new`")
    if isinstance(error, mx.ResourceExhaustedError) or "quota" in str(error).lower():
        return LikenessError(f"Modal has no {gpu or 'GPU'} for you right now (quota or capacity): "
                             "try again later or another --gpu")
    if isinstance(error, mx.ConnectionError | ConnectionError | TimeoutError | OSError) or name == "GRPCError":
        return LikenessError("cannot reach Modal (no network?): check the connection, or train with --where local")
    first = str(error).strip().splitlines()[0] if str(error).strip() else name
    return LikenessError(f"Modal: {first}")


def check_modal_ready():
    """Import modal and check a token is configured, before anything is uploaded; return the module."""
    try:
        import modal
    except ImportError:
        raise LikenessError("Modal is not installed: pip install modal (then `modal token new`)") from None
    from modal.config import config

    # The token comes from MODAL_TOKEN_ID/SECRET or ~/.modal.toml; only its presence is checked, never shown.
    if not (os.environ.get("MODAL_TOKEN_ID") or config.get("token_id")):
        raise LikenessError("no Modal token on this machine: run `modal token new`")
    return modal


@contextlib.contextmanager
def _modal_errors(gpu: str | None = None):
    try:
        yield
    except LikenessError:
        raise
    except Exception as error:
        raise modal_error(error, gpu) from None


class _ModalCall:
    def __init__(self, stack: contextlib.ExitStack, call, events, control):
        self._stack, self._call, self._events, self._control = stack, call, events, control

    def next_event(self, timeout):
        return self._events.get(block=True, timeout=timeout)  # None on timeout

    def stop(self):
        from engine.placement.cloud.remote import STOP

        self._control.put(STOP)

    def cancel(self):
        self._call.cancel()

    def result(self, timeout=None):
        return self._call.get(timeout=timeout)

    def close(self):
        self._stack.close()


class ModalCloud:
    """The real Modal: volumes by name, the App run ephemerally for each job."""

    def __init__(self):
        self.modal = check_modal_ready()
        from engine.placement.cloud import modal_app

        self.app = modal_app

    def has_dataset(self, key):
        with _modal_errors():
            try:
                names = {entry.path.rsplit("/", 1)[-1] for entry in self.app.datasets_volume.listdir(key)}
            except self.modal.exception.NotFoundError:
                return False
            return DATASET_COMPLETE in names

    def upload_dataset(self, key, folder):
        with _modal_errors():
            with self.app.datasets_volume.batch_upload(force=True) as batch:
                batch.put_directory(str(folder), f"/{key}")
            with self.app.datasets_volume.batch_upload(force=True) as batch:
                batch.put_file(_empty_file(), f"/{key}/{DATASET_COMPLETE}")

    def replace_run(self, run_key, folder):
        with _modal_errors():
            with contextlib.suppress(self.modal.exception.NotFoundError):
                self.app.runs_volume.remove_file(run_key, recursive=True)
            if folder is not None:
                with self.app.runs_volume.batch_upload(force=True) as batch:
                    batch.put_directory(str(folder), f"/{run_key}")

    def start_training(self, request, gpu):
        stack = contextlib.ExitStack()
        with _modal_errors(gpu):
            try:
                stack.enter_context(self.app.app.run())
                events = stack.enter_context(self.modal.Queue.ephemeral())
                control = stack.enter_context(self.modal.Queue.ephemeral())
                function = self.app.train.with_options(gpu=gpu)
                call = function.spawn(request, events, control)
            except BaseException:
                stack.close()
                raise
        return _ModalCall(stack, call, events, control)

    def read_run_file(self, run_key, relative):
        with _modal_errors():
            return b"".join(self.app.runs_volume.read_file(f"{run_key}/{relative}"))

    def download_run(self, run_key, into):
        with _modal_errors():
            for entry in self.app.runs_volume.listdir(run_key, recursive=True):
                if entry.type != self.modal.volume.FileEntryType.FILE:
                    continue
                target = into / Path(entry.path).relative_to(run_key)
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.partial")
                with partial.open("wb") as handle:
                    self.app.runs_volume.read_file_into_fileobj(entry.path, handle)
                partial.replace(target)


def _empty_file():
    import io

    return io.BytesIO(b"")
