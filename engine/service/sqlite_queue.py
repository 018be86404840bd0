"""The job queue in one SQLite file (WAL), shared by the service and its worker processes.

WAL lets the API read while a worker writes events. Every write is a short `BEGIN IMMEDIATE`
transaction on a fresh connection: connections are cheap, and no connection is ever shared
between threads or processes.

The file may go wrong under the service: a full disk or a read-only file makes writes fail
(`StorageError`, a 409: nothing changed, try again), and a deleted or replaced file is noticed
at the next connection and given its schema again, so the API never answers "no such table".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.placement.decision import Where
from engine.service.errors import Conflict, DatabaseBusy, NotFound, StorageError
from engine.service.models import FINAL_STATES, Job, JobEvent, JobKind
from engine.service.queue import JobQueue

DB_FILENAME = "jobs.sqlite3"
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    run_dir TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    log TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    progress TEXT,
    result TEXT,
    last_event_id INTEGER NOT NULL DEFAULT 0,
    placement TEXT NOT NULL DEFAULT 'auto',
    gpu TEXT,
    ran_on TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, queued_at);
CREATE TABLE IF NOT EXISTS events (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    time TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
);
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a queue written by an older likeness up to this schema; its jobs are kept."""
    columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    if "placement" not in columns:  # version 1 -> 2: where a train job runs
        db.execute("ALTER TABLE jobs ADD COLUMN placement TEXT NOT NULL DEFAULT 'auto'")
        db.execute("ALTER TABLE jobs ADD COLUMN gpu TEXT")
    if "ran_on" not in columns:  # version 2 -> 3: where placement sent the newest attempt
        db.execute("ALTER TABLE jobs ADD COLUMN ran_on TEXT")


def _storage_error(error: sqlite3.Error) -> StorageError:
    text = str(error).lower()
    if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        # Not a full disk nor a read-only file: another program (a backup, a database browser) holds the
        # file's write lock; saying "free space" would send the user after the wrong cause.
        return DatabaseBusy(f"the job database is locked by another program ({error}); close whatever has "
                            "jobs.sqlite3 open for writing, or try again in a moment")
    return StorageError(f"the job database cannot be used now ({error}); free space under LIKENESS_HOME "
                        "or make jobs.sqlite3 writable, then try again")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class SqliteJobQueue(JobQueue):
    def __init__(self, path: Path, keep_open: bool = False, busy_timeout_s: float = 30):
        """`keep_open`: hold one idle connection for the queue's life (the service does). SQLite removes
        the -wal and -shm files when the last connection closes, and a reader must create them again,
        which a full disk refuses: with one connection always open, reads never need to write.
        `busy_timeout_s`: how long a write waits for another process's write lock before DatabaseBusy."""
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._keep_open = keep_open
        self._keeper: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file that has our schema
        self._schema_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ensure_schema()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _ensure_schema(self) -> None:
        """Give the file its tables, once per file: again if it was deleted or replaced."""
        with self._schema_lock:
            if self._identity is not None and self._file_identity() == self._identity:
                return  # another thread got here first
            if self._keeper is not None:
                # Closed first: it holds the old file's -wal and -shm, which must not meet the new file.
                self._keeper.close()
                self._keeper = None
            if self._file_identity() is None:
                for stale in ("-wal", "-shm"):  # a journal without its database would be replayed into a new one
                    Path(f"{self.path}{stale}").unlink(missing_ok=True)
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                try:
                    db.row_factory = sqlite3.Row
                    # WAL is a property of the file: set once, every later connection gets it.
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)
                    _migrate(db)
                    # Only when it changes: on a full disk the service must still start, and read.
                    if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                finally:
                    db.close()
                if self._keep_open:
                    self._keeper = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                    self._keeper.execute("SELECT count(*) FROM jobs").fetchone()  # maps -shm, keeps -wal
            except sqlite3.Error as error:
                raise _storage_error(error) from error
            self._identity = self._file_identity()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._file_identity() != self._identity:
            self._ensure_schema()  # deleted or replaced while we ran: an empty queue, never a 500
        try:
            # timeout: wait for another process's write transaction instead of failing with "locked".
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as error:
            raise _storage_error(error) from error
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
            yield db
        except sqlite3.Error as error:
            raise _storage_error(error) from error
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"], kind=row["kind"], state=row["state"], config=json.loads(row["config"]),
            run_dir=row["run_dir"], attempt=row["attempt"], created_at=row["created_at"],
            queued_at=row["queued_at"], started_at=row["started_at"], finished_at=row["finished_at"],
            error=row["error"], log=row["log"], cancel_requested=bool(row["cancel_requested"]),
            worker_pid=row["worker_pid"], progress=json.loads(row["progress"]) if row["progress"] else None,
            result=json.loads(row["result"]) if row["result"] else None, last_event_id=row["last_event_id"],
            where=row["placement"], gpu=row["gpu"], ran_on=row["ran_on"],
        )

    def _get(self, db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return self._job(row)

    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            return self._get(db, job_id)

    def list(self, state: str | None = None, kind: str | None = None) -> list[Job]:
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        with self._connect() as db:
            return [self._job(row) for row in db.execute(sql, params)]

    def active_run_dirs(self) -> set[str]:
        with self._connect() as db:
            rows = db.execute("SELECT run_dir FROM jobs WHERE state IN ('queued', 'running') AND run_dir IS NOT NULL")
            return {row["run_dir"] for row in rows}

    def running_jobs(self) -> list[Job]:
        return self.list(state="running")

    def cancel_requested(self, job_id: int) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def events(self, job_id: int, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                              (job_id, after, limit)).fetchall()
        return [JobEvent(id=r["id"], job_id=r["job_id"], type=r["type"], time=r["time"], data=json.loads(r["data"]))
                for r in rows]

    # -- writing: each state change writes its event in the same transaction ------------------

    def _event(self, db: sqlite3.Connection, job_id: int, type: str, data: dict[str, Any] | None) -> JobEvent:
        # Inside a BEGIN IMMEDIATE transaction no other writer runs, so last_event_id + 1 is ours alone.
        row = db.execute("SELECT last_event_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        event = JobEvent(id=row["last_event_id"] + 1, job_id=job_id, type=type, time=_now(), data=data or {})
        db.execute("INSERT INTO events (job_id, id, type, time, data) VALUES (?, ?, ?, ?, ?)",
                   (job_id, event.id, event.type, event.time, json.dumps(event.data)))
        db.execute("UPDATE jobs SET last_event_id = ? WHERE id = ?", (event.id, job_id))
        if type == "progress":
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(event.data), job_id))
        elif type == "placed":
            db.execute("UPDATE jobs SET ran_on = ? WHERE id = ?", (event.data.get("on"), job_id))
        return event

    def add_event(self, job_id: int, type: str, data: dict[str, Any] | None = None) -> JobEvent:
        with self._write() as db:
            return self._event(db, job_id, type, data)

    def submit(self, kind: JobKind, config: dict[str, Any], run_dir: str | None,
               where: Where = "auto", gpu: str | None = None) -> Job:
        now = _now()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO jobs (kind, state, config, run_dir, created_at, queued_at, placement, gpu) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (kind, json.dumps(config), run_dir, now, now, where, gpu))
            job_id = cursor.lastrowid
            self._event(db, job_id, "queued", {"attempt": 1})
            return self._get(db, job_id)

    def claim_next(self, kinds: tuple[JobKind, ...]) -> Job | None:
        marks = ", ".join("?" for _ in kinds)
        with self._write() as db:
            # One job of these kinds at a time, on record: a job whose end could not be written yet
            # (disk full, read-only database) still holds its slot, so no second GPU job starts.
            if db.execute(f"SELECT 1 FROM jobs WHERE state = 'running' AND kind IN ({marks}) LIMIT 1",
                          kinds).fetchone():
                return None
            row = db.execute(f"SELECT id, attempt FROM jobs WHERE state = 'queued' AND kind IN ({marks}) "
                             "ORDER BY queued_at, id LIMIT 1", kinds).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, error = NULL, "
                       "worker_pid = NULL WHERE id = ?", (_now(), row["id"]))
            self._event(db, row["id"], "running", {"attempt": row["attempt"]})
            return self._get(db, row["id"])

    def set_worker(self, job_id: int, pid: int, log: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET worker_pid = ?, log = ? WHERE id = ?", (pid, log, job_id))

    def finish(self, job_id: int, attempt: int, state: str, error: str | None = None,
               result: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> bool:
        assert state in FINAL_STATES
        with self._write() as db:
            # Only the attempt that is running may end it: a stale worker of an older attempt cannot.
            cursor = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ? "
                "WHERE id = ? AND attempt = ? AND state = 'running'",
                (state, _now(), error, json.dumps(result) if result is not None else None, job_id, attempt))
            if cursor.rowcount == 0:
                return False
            self._event(db, job_id, state, data or ({"reason": error} if error else {}))
            return True

    def request_cancel(self, job_id: int) -> Job:
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, error = ? "
                           "WHERE id = ?", (_now(), "cancelled before it started", job_id))
                self._event(db, job_id, "cancelled", {"reason": "cancelled before it started"})
            elif job.state == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                self._event(db, job_id, "log", {"message": "cancel requested: stopping at the next step"})
            else:
                raise Conflict(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
            return self._get(db, job_id)

    def requeue(self, job_id: int, config: dict[str, Any], where: Where | None = None,
                gpu: str | None = None) -> Job:
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state not in ("interrupted", "cancelled", "failed"):
                raise Conflict(f"job {job_id} is {job.state}; only interrupted, cancelled or failed jobs can be resumed")
            where = where or job.where
            gpu = gpu or (job.gpu if where == job.where else None)
            db.execute("UPDATE jobs SET state = 'queued', config = ?, attempt = attempt + 1, queued_at = ?, "
                       "finished_at = NULL, error = NULL, cancel_requested = 0, worker_pid = NULL, result = NULL, "
                       "placement = ?, gpu = ?, ran_on = NULL WHERE id = ?", (json.dumps(config), _now(), where, gpu, job_id))
            self._event(db, job_id, "queued", {"attempt": job.attempt + 1, "resume": True, "where": where})
            return self._get(db, job_id)

    def interrupt_running(self, reason: str) -> list[int]:
        with self._write() as db:
            ids = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            for job_id in ids:
                db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                           (_now(), reason, job_id))
                self._event(db, job_id, "interrupted", {"reason": reason})
            return ids
