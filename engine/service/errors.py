"""The service's refusals: each is a `LikenessError` (one line for the user) with its HTTP status."""

from __future__ import annotations

from engine.errors import LikenessError


class ServiceError(LikenessError):
    """A request the service turns down; `status` is the HTTP answer."""

    status = 400


class NotFound(ServiceError):
    """No such job, dataset, run or file."""

    status = 404


class Conflict(ServiceError):
    """The request clashes with the state of a job or a run (already running, finished, ...)."""

    status = 409


class Damaged(ServiceError):
    """A dataset's or run's file that is there but cannot be read (not UTF-8, not JSON, the wrong shape).

    409: the request was fine, the folder's state is not; the reason names the file and why."""

    status = 409


class PathRefused(ServiceError):
    """A path that would lead outside LIKENESS_HOME (or outside the dataset or run asked for)."""

    status = 403


class TooLarge(ServiceError):
    """An upload over the size or file-count limit."""

    status = 413


class InvalidField(ServiceError):
    """A config that parses but cannot work here: the field and the reason, like a validation error."""

    status = 422

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class StorageError(ServiceError):
    """The disk or the job database cannot take a write now (full, read-only, replaced); nothing changed.

    409, not 507: the service itself is fine and every read still answers; the request may be sent
    again once there is room, and house rules keep 5xx for bugs.
    """

    status = 409


class DatabaseBusy(StorageError):
    """Another program holds the job database's write lock for longer than we wait: nothing is wrong
    with the disk or the file, the write can simply be made later."""
