"""A real `likeness serve` in a subprocess on a free loopback port, and a small client for tests."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_home(root: Path, models: Path | None = None, dataset: Path | None = None) -> Path:
    """A LIKENESS_HOME of its own, sharing the session's built tiny model and holding the dataset."""
    root.mkdir(parents=True, exist_ok=True)
    if models is not None:
        (root / "models").symlink_to(models, target_is_directory=True)
    if dataset is not None:
        shutil.copytree(dataset, root / "datasets" / "astronaut")
    return root


class Service:
    """`python -m engine serve` for one LIKENESS_HOME; start, kill -9, restart."""

    def __init__(self, home: Path, token: str | None = None, env: dict[str, str] | None = None,
                 memory_limit: int | None = None, open_files: int | None = None):
        self.home = home
        self.token = token
        # An address-space cap the service's workers inherit: a real out-of-memory on a machine
        # without a GPU (torch's CPU allocator fails as CUDA's would on a small card).
        self.memory_limit = memory_limit
        self.open_files = open_files  # RLIMIT_NOFILE, soft and hard: a small machine's, for slow-client tests
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LIKENESS_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
        self.env.pop("LIKENESS_TOKEN_FILE", None)
        if token:
            self.env["LIKENESS_TOKEN"] = token
        else:
            self.env.pop("LIKENESS_TOKEN", None)
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        log = (self.home / "service.log").open("ab")
        limit, files = self.memory_limit, self.open_files

        def cap() -> None:
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            if files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        self.process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(self.port)],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=cap if limit or files else None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            assert self.process.poll() is None, (self.home / "service.log").read_text()
            time.sleep(0.1)
        raise AssertionError("the service did not come up in 60 s")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers(kwargs.pop("headers", None)), timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, headers=self.headers(kwargs.pop("headers", None)), timeout=30, **kwargs)

    def submit(self, kind: str, config: dict) -> dict:
        answer = self.post("/jobs", json={"kind": kind, "config": config})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def stream(self, job_id: int, last_event_id: int | None = None, follow: bool = True):
        """Events of the job's SSE stream as they come (a generator; close it to disconnect)."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        with requests.get(f"{self.url}/jobs/{job_id}/events", params={"follow": str(follow).lower()},
                          headers=self.headers(headers), stream=True, timeout=120) as answer:
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("text/event-stream")
            frame: dict[str, str] = {}
            for line in answer.iter_lines(decode_unicode=True):
                if line:
                    name, _, value = line.partition(":")
                    frame[name] = value.removeprefix(" ")
                    continue
                if "data" in frame:
                    event = json.loads(frame["data"])
                    assert int(frame["id"]) == event["id"] and frame["event"] == event["type"]
                    yield event
                frame = {}

    def events(self, job_id: int, last_event_id: int | None = None) -> list[dict]:
        return list(self.stream(job_id, last_event_id, follow=False))

    def wait_for(self, job_id: int, types: set[str], last_event_id: int | None = None,
                 until=lambda event: False) -> list[dict]:
        """Follow the stream until an event of one of `types` (or one `until` accepts); return all seen."""
        seen = []
        for event in self.stream(job_id, last_event_id):
            seen.append(event)
            if event["type"] in types or until(event):
                break
        return seen


def train_config(out: str, **overrides) -> dict:
    """The conftest's tiny run, as JSON for the API: paths relative to the service's LIKENESS_HOME."""
    values = dict(data="datasets/astronaut", out=out, base="tiny", steps=6, resolution=64, rank=4, lr=1e-3,
                  sample_every=3, sample_steps=2, checkpoint_every=3, checkpoints_keep=5, sample_seeds=[0],
                  validation_prompts=["a photo of {token} {class_word}"])
    values.update(overrides)
    return values
