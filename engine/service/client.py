"""Talking to a running `likeness serve` from the CLI: submit, follow events, list, cancel, resume.

Plain urllib (no extra dependency, nothing heavy to import). Events come as Server-Sent Events;
when the connection drops (the service restarted), following reconnects with Last-Event-ID and
so misses nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.errors import LikenessError
from engine.service.config import read_client_token

DEFAULT_SERVER = "http://127.0.0.1:8000"
FINAL_EVENTS = ("done", "failed", "cancelled", "interrupted")


class Unreachable(LikenessError):
    """No answer from the service (not running, restarting, network)."""


def default_server() -> str:
    return os.environ.get("LIKENESS_SERVER", DEFAULT_SERVER)


def find_service(server: str | None = None, home: Path | None = None) -> ServiceClient:
    """The service to talk to: `server`, else $LIKENESS_SERVER, else the one on the default port if it
    answers, else the one running on LIKENESS_HOME (the engine the TUI started, on a port of its own,
    with the token it keeps in a file only this user can read)."""
    from engine.service.home_lock import running_service
    from engine.settings import Settings

    if server or os.environ.get("LIKENESS_SERVER"):
        return ServiceClient(server or default_server())
    default = ServiceClient(DEFAULT_SERVER)
    if default.healthy():
        return default
    local = running_service(home or Settings().home)
    if local is not None:
        return ServiceClient(local.url, token=local.token())
    return default


class ServiceClient:
    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.token = token if token is not None else read_client_token()

    def _open(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
              timeout: float | None = 30):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("detail", error.reason)
            except (ValueError, AttributeError):
                detail = error.reason
            raise LikenessError(f"service: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise Unreachable(f"cannot reach the likeness service at {self.url} ({reason}); "
                                "is `likeness serve` running?") from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        """A file the service serves (grids, reports), by the URL path it reported."""
        with self._open("GET", path) as response:
            return response.read()

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/health").get("status") == "ok"
        except LikenessError:
            return False

    def submit(self, kind: str, config) -> dict[str, Any]:
        """Queue a job with a typed config (TrainConfig, GenerateConfig, PrepConfig)."""
        payload = config if isinstance(config, dict) else config.model_dump(mode="json")
        return self.request("POST", "/jobs", {"kind": kind, "config": payload})

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/jobs" + (f"?state={state}" if state else ""))

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{job_id}/cancel")

    def resume(self, job_id: int, where: str | None = None, gpu: str | None = None) -> dict[str, Any]:
        """A new attempt of a train job; `where`/`gpu` move it (None keeps its placement)."""
        body = {key: value for key, value in (("where", where), ("gpu", gpu)) if value is not None}
        return self.request("POST", f"/jobs/{job_id}/resume", body or None)

    def events(self, job_id: int, last_event_id: int = 0, retries: int = 10) -> Iterator[dict[str, Any]]:
        """The job's events until it ends, reconnecting with Last-Event-ID when the stream drops."""
        failures = 0
        while True:
            try:
                with self._open("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(last_event_id)},
                                timeout=60) as response:
                    failures = 0
                    for event in _parse_sse(response):
                        last_event_id = event["id"]
                        yield event
                # The service closes a stream once the job has ended and every event is sent; a stream
                # cut short (the service died) looks the same from here, so ask the job itself.
                job = self.request("GET", f"/jobs/{job_id}")
                if job["state"] in FINAL_EVENTS and job["last_event_id"] <= last_event_id:
                    return
                raise ConnectionError("the event stream ended before the job did")
            except (Unreachable, OSError, http.client.HTTPException) as error:
                failures += 1
                if failures > retries:
                    raise LikenessError(f"lost the event stream of job {job_id}: {error}") from None
                time.sleep(1.0)


def _parse_sse(response) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
            continue
        if line.startswith(":"):
            continue  # a keep-alive comment
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))


def engine_event(event: dict[str, Any]):
    """A stored event as the engine's event dataclass, for TerminalProgress; None if it has none."""
    from engine.events import Log, OverfittingWarning, Phase, Progress, SampleReady, Started

    data, kind = event["data"], event["type"]
    if kind == "started":
        return Started(data["first_step"], data["total"])
    if kind == "progress" and "stage" not in data:
        return Progress(data["step"], data["total"], data.get("loss"), data.get("lr"),
                        data.get("seconds_per_step") or 0.0, data.get("eta_seconds") or 0.0)
    if kind == "sample_ready":
        return SampleReady(data["step"], Path(data["path"]), data.get("identity_score"), data.get("likeness"),
                           data.get("memorisation"), data.get("variety"), data.get("recommended_step"))
    if kind == "overfitting":
        return OverfittingWarning(data["step"], data["cause"], data["message"])
    if kind == "log":
        return Log(data["message"])
    if kind == "phase":
        return Phase(data["name"], data.get("index", 0), data.get("total", 0), data.get("fraction"))
    if kind in ("queued", "running"):
        return Log(f"job {event['job_id']} {kind} (attempt {data.get('attempt', 1)})")
    return None


def follow(client: ServiceClient, job_id: int, sink: Callable, last_event_id: int = 0) -> dict[str, Any] | None:
    """Feed the job's events to `sink` until it ends; return its final event."""
    final = None
    for event in client.events(job_id, last_event_id):
        if event["type"] == "progress" and "stage" in event["data"]:
            data = event["data"]
            if sys.stderr.isatty():
                end = "\n" if data["step"] == data["total"] else ""
                print(f"\r{data['stage']} {data['step']}/{data['total']}", end=end, file=sys.stderr, flush=True)
            continue
        converted = engine_event(event)
        if converted is not None:
            sink(converted)
        if event["type"] in FINAL_EVENTS:
            final = event
    return final


def run_remote(server: str, kind: str, config, unit: str = "step") -> int:
    """Submit a job, follow it with the progress bar, and report how it ended (the CLI's --server)."""
    from engine.progress import TerminalProgress

    client = ServiceClient(server)
    job = client.submit(kind, config)
    print(f"job {job['id']} queued on {client.url}", file=sys.stderr)
    return follow_to_end(client, job["id"], TerminalProgress(unit=unit))


def follow_to_end(client: ServiceClient, job_id: int, progress, last_event_id: int = 0) -> int:
    try:
        final = follow(client, job_id, progress, last_event_id)
    except KeyboardInterrupt:
        progress.close()
        print(f"\nstopped watching; job {job_id} goes on (likeness cancel {job_id} stops it)", file=sys.stderr)
        return 130
    finally:
        progress.close()
    return report_end(job_id, final)


def ended_words(kind: str, reason: str | None) -> str:
    """'cancelled at step 20', 'failed: no Modal token…': a final event's type and reason, the type
    said once (a cancel's reason already starts with 'cancelled')."""
    reason = (reason or "").strip()
    if not reason:
        return kind
    return reason if reason.startswith(kind) else f"{kind}: {reason}"


def report_end(job_id: int, final: dict[str, Any] | None) -> int:
    """Print how a followed job ended; 0 when done."""
    if final is None:
        print(f"job {job_id}: the stream ended without an outcome", file=sys.stderr)
        return 1
    data = final["data"]
    if final["type"] == "done":
        result = data.get("result") or {}
        for key in ("lora", "run_dir", "dataset", "out"):
            if result.get(key):
                print(f"{key}: {result[key]}")
        for grid in result.get("grids", []):
            print(f"grid: {grid['path']}")
        if "accepted" in result:
            print(f"accepted {result['accepted']} of {result.get('found')} photos")
        return 0
    if final["type"] == "failed":
        reason = str(data.get("reason"))
        # A worker that died says where its log is in the reason already: the path once, not twice.
        log = f" (log: {data['log']})" if data.get("log") and data["log"] not in reason else ""
        print(f"likeness: job {job_id} failed: {reason}{log}", file=sys.stderr)
    elif final["type"] == "interrupted":
        print(f"likeness: job {job_id} was interrupted; `likeness resume {job_id}` continues it", file=sys.stderr)
    else:
        print(f"likeness: job {job_id} {ended_words('cancelled', data.get('reason'))}", file=sys.stderr)
    return 1
