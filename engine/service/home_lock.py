"""One service per LIKENESS_HOME: a lock the service holds while it runs, and where to find it.

Two services on one home each take the other's running jobs for a crash's leftovers: a starting
service marks every "running" row interrupted and kills its worker, and two workers can end up in
one run folder. So `likeness serve` takes an exclusive lock on LIKENESS_HOME/service.lock for its
whole life (the kernel lets go of it when the process dies, however it dies) and writes where it
listens into LIKENESS_HOME/service.json; a second one refuses in one line naming the first, and
the TUI and the CLI use the first instead of starting their own.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LikenessError

LOCK_FILE = "service.lock"
SERVICE_FILE = "service.json"


@dataclass(frozen=True)
class RunningService:
    """The service that holds a home's lock: where it listens and where its token is."""

    url: str
    pid: int
    token_file: str | None = None

    def token(self) -> str | None:
        """Its token, for a user who may read the token file (the file is 0600: only its owner)."""
        if not self.token_file:
            return None
        try:
            return Path(self.token_file).read_text().strip() or None
        except OSError:
            return None


def _held(lock: Path) -> bool:
    """Whether some process holds `lock` now."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of a shared lock taken just now
    return False


def running_service(home: Path) -> RunningService | None:
    """The service running on `home` now, or None when none holds its lock."""
    if not _held(home / LOCK_FILE):
        return None
    try:
        record = json.loads((home / SERVICE_FILE).read_text())
        return RunningService(str(record["url"]), int(record["pid"]), record.get("token_file"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # starting: the lock is taken and the file not written yet


class HomeLock:
    """The running service's hold on its LIKENESS_HOME."""

    def __init__(self, home: Path):
        self.home = home
        self._fd: int | None = None

    def acquire(self, url: str, token_file: Path | None = None, wait_s: float = 1.0) -> None:
        """Take the home, or refuse in one line naming the service that has it.

        `wait_s`: a moment's grace for a reader that holds the lock shared to look at it."""
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by workers
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LikenessError(self._taken_message()) from None
                time.sleep(0.05)
        self._fd = fd
        record = {"url": url, "pid": os.getpid(), "token_file": str(token_file) if token_file else None}
        partial = self.home / f".{SERVICE_FILE}.partial"
        partial.write_text(json.dumps(record))
        os.replace(partial, self.home / SERVICE_FILE)

    def _taken_message(self) -> str:
        other = None
        for _ in range(20):  # the other service may be a moment from writing where it listens
            other = running_service(self.home)
            if other is not None or not _held(self.home / LOCK_FILE):
                break
            time.sleep(0.05)
        where = f" at {other.url} (process {other.pid})" if other else ""
        return (f"another likeness service already runs on LIKENESS_HOME={self.home}{where}: use it "
                "(the TUI and `likeness jobs` find it by themselves), or stop it first")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            record = json.loads((self.home / SERVICE_FILE).read_text())
            if record.get("pid") == os.getpid():
                (self.home / SERVICE_FILE).unlink()
        except (OSError, ValueError):
            pass
        os.close(self._fd)  # the lock goes with the descriptor
        self._fd = None
