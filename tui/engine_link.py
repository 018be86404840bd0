"""The TUI's one door to the engine: the engine service, started here when none is given.

Every method blocks; screens call them from worker threads. With no ``--server``, a local
service is started in its own session (so a running job outlives the TUI) and remembered in
``LIKENESS_HOME/tui-service.json`` so the next start reconnects to it; a service already running on
the home (``likeness serve``) is used instead of starting a second one. The local service asks for a
token that is new each time it starts and kept in a file only the user can read, so no web page and
no other local user can use it; it reads photos in the folders a user keeps them in (the home folder,
removable media, the temporary folder, and ``LIKENESS_PHOTO_ROOTS``) and base models anywhere under the
user's home folder (``LIKENESS_MODEL_ROOTS``); a shared or containerised service reads only what it is given.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.errors import LikenessError
from engine.service.client import ServiceClient
from engine.settings import Settings


class EngineLink:
    """Blocking calls to one engine service, in the words the screens use."""

    def __init__(self, client: ServiceClient, process: subprocess.Popen | None = None,
                 state_file: Path | None = None):
        self.client = client
        self.process = process  # the service we started, if we did
        self.state_file = state_file

    def close(self) -> None:
        """Let go of the engine at once; a local engine no other TUI uses is stopped unless a job runs.

        Quitting must never wait on the engine (it may be busy for minutes drawing a sample grid),
        so the check and the stop happen in a small detached process.
        """
        if self.state_file is None:
            return  # someone else's engine (--server): not ours to stop
        clients = self.state_file.parent / CLIENTS
        (clients / str(os.getpid())).unlink(missing_ok=True)
        if live_clients(clients):
            return
        subprocess.Popen([sys.executable, "-m", "tui.engine_link", str(self.state_file)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)

    def system(self) -> dict:
        return self.client.request("GET", "/system")

    def jobs(self) -> list[dict]:
        return self.client.jobs()

    def cancel(self, job_id: int) -> dict:
        return self.client.cancel(job_id)

    def resume(self, job_id: int, where: str | None = None) -> int:
        """Queue the job's next attempt (`where="modal"`: on a cloud GPU); its id."""
        return self.client.resume(job_id, where)["id"]

    def job(self, job_id: int) -> dict:
        return self.client.request("GET", f"/jobs/{job_id}")

    def job_log(self, job_id: int) -> str:
        """The worker's output for the job (its log lines, and a traceback if it crashed)."""
        return self.client.get_bytes(f"/jobs/{job_id}/log").decode(errors="replace")

    def waiting_for(self, job_id: int) -> int | None:
        """The GPU job a queued job waits behind (one runs at a time), if any."""
        ahead = [job for job in self.jobs() if job["kind"] in ("train", "generate") and job["id"] != job_id
                 and (job["state"] == "running" or (job["state"] == "queued" and job["id"] < job_id))]
        return min(ahead, key=lambda job: (job["state"] != "running", job["id"]))["id"] if ahead else None

    def going_on(self) -> list[dict]:
        """The jobs running or queued in the engine (they go on without a TUI), running first."""
        jobs = [job for job in self.jobs() if job["state"] in ("running", "queued")]
        return sorted(jobs, key=lambda job: (job["state"] != "running", job["id"]))

    def goodbye(self) -> str | None:
        """What a quitting TUI prints when a job goes on: which, and how to see or stop it from the CLI."""
        try:
            jobs = self.going_on()
        except LikenessError:
            return None  # the engine is away: nothing to say about its jobs
        if not jobs:
            return None
        first = jobs[0]
        more = f" (and {len(jobs) - 1} more)" if len(jobs) > 1 else ""
        return (f"likeness: {job_status(first)}{more}; it goes on in the engine: `likeness jobs` shows it, "
                f"`likeness cancel {first['id']}` stops it, `likeness` reopens this")

    def latest_train_job(self) -> dict | None:
        """The train job to show on opening Live run: the running one, else the next queued, else the newest."""
        trains = [job for job in self.jobs() if job["kind"] == "train"]  # newest first
        running = [job for job in trains if job["state"] == "running"]
        queued = [job for job in reversed(trains) if job["state"] == "queued"]  # the next to run first
        return (running or queued or trains or [None])[0]

    def events(self, job_id: int, should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, dict]]:
        """Every event of the job from its first, as (type, data), until it ends.

        However long the engine is away (a restart, a container coming back), this keeps trying and
        carries on from the last event it saw, so the screen misses nothing and repeats nothing.
        """
        # The client reconnects with Last-Event-ID after each lost connection; here, without giving up.
        for event in self.client.events(job_id, retries=sys.maxsize):
            if should_stop():
                return
            yield event["type"], event["data"]

    def file_bytes(self, url: str) -> bytes:
        return self.client.get_bytes(url)

    def datasets(self) -> list[dict]:
        return self.client.request("GET", "/datasets")

    def prepare(self, name: str, photos: str, options: dict) -> int:
        body = {"name": name, "photos": photos, "options": {**options, "force": True}}
        return self.client.request("POST", "/datasets", body)["id"]

    def dataset_manifest(self, name: str) -> dict:
        return self.client.request("GET", f"/datasets/{name}/manifest")

    def dataset_report(self, name: str) -> bytes:
        return self.client.get_bytes(f"/datasets/{name}/report")

    def runs(self) -> list[dict]:
        return self.client.request("GET", "/runs")

    def train(self, dataset: str, name: str, config: dict) -> int:
        body = {"data": f"datasets/{dataset}", "out": f"runs/{name}", **config}
        return self.client.submit("train", body)["id"]

    def generate(self, run: str, config: dict, sweeps: list[str]) -> int:
        from engine.generation.sweeps import parse_sweep

        axes = dict(parse_sweep(text) for text in sweeps)
        body = {"lora": f"runs/{run}", "sweeps": axes, **{k: v for k, v in config.items() if v is not None}}
        return self.client.submit("generate", body)["id"]

    def base_problem(self, spec: str) -> str | None:
        """What ``likeness train`` says of a hub base before it places the run, or None when it goes on.

        The CLI's own check (engine.models.base_model.check_base_available, as engine.commands.where
        calls it for --where auto): a repo id neither cached here nor known to a reachable hub is
        refused in one line, not planned on Modal with a price. Seconds at most (it may ask the hub),
        so screens call it from a worker. Folders, files and tiny are the engine's to check on submit.
        """
        from engine.models.base_model import REPO_ID, BaseModelSource, check_base_available

        if spec == "tiny" or not REPO_ID.match(spec) or Path(spec).expanduser().exists():
            return None
        try:
            check_base_available(BaseModelSource(spec, "hub", spec))
        except LikenessError as error:
            return str(error)
        return None

    def plan(self, config: dict, system: dict) -> tuple[dict, str]:
        """The run as it will be sent, and where it goes, how long it takes, what it costs, what it samples.

        engine.placement decides where; a run on this machine's CPU draws smaller sample grids
        (engine.training.eta.sampled_as_on_the_cpu) unless the config says otherwise, and gets a CPU
        time estimate, as ``likeness train`` does. Raises pydantic's ValidationError for a config the
        engine would refuse.
        """
        from engine.placement.decision import decide, model_family
        from engine.training.eta import CPU_SAMPLING, cpu_plan_line, sampled_as_on_the_cpu, sampling_line

        train_config, decision = self._decide(config, system)
        local, host_free_gib = _engine_devices(system)
        if decision.where == "modal" and not system.get("modal_configured", True):
            from engine.errors import LikenessError

            # Said before `s`, not after: a Modal run with no token fails as soon as it starts.
            raise LikenessError("this run needs a GPU and there is none here, and Modal is not set up on the "
                                "engine's machine (`modal token new` there); to try the interface, set Base model "
                                "to tiny, the built-in test model")
        if decision.where == "local" and decision.gpu is None:
            train_config = sampled_as_on_the_cpu(train_config)
            drawn = train_config.model_dump(mode="json", include=set(CPU_SAMPLING))
            config = {**drawn, **config}
            # The savers' line names the sample batch, which depends on the smaller grid this run draws.
            decision = decide(train_config, local_gpus=local, host_free_gib=host_free_gib)
            plan = decision.estimate.plan
            line = decision.summary() + "\n" + cpu_plan_line(train_config, model_family(train_config),
                                                              plan.sample_batch if plan else 1)
        else:
            line = decision.summary() + "\n" + sampling_line(train_config)
        return config, line

    def _decide(self, config: dict, system: dict):
        """(TrainConfig, Decision): where the engine's machine would run ``config``."""
        from engine.placement.decision import decide
        from engine.training.config import TrainConfig

        local, host_free_gib = _engine_devices(system)
        train_config = TrainConfig(data=Path("."), out=Path("."), **config)
        return train_config, decide(train_config, local_gpus=local, host_free_gib=host_free_gib)

    def simulate(self, config: dict, system: dict, on_progress: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        """``config`` trained at full size on a simulated copy of the card it would go to (the engine's
        GPU, or the Modal GPU it would be sent to): each phase's peak beside the estimate, and whether it
        fits. The same simulation as ``likeness train --dry-run --exact``, in a child process."""
        from engine.commands.dry_run import describe_simulation, simulated_card
        from engine.training.simulation_process import simulate_in_child

        train_config, decision = self._decide(config, system)
        free, name = simulated_card(decision)
        peaks = simulate_in_child(train_config, free, decision.estimate.plan, f"simulated {name}",
                                  on_progress=on_progress, should_stop=should_stop)
        return describe_simulation(decision, peaks)


def _engine_devices(system: dict) -> tuple[list, float | None]:
    """The engine machine's GPU (as its /system reports it) and free RAM in GiB."""
    from engine.placement.gpus import LocalGpu

    local = []
    if system.get("gpu_name") and system.get("vram_total_mb"):
        local = [LocalGpu(0, system["gpu_name"], system["vram_total_mb"] / 1024,
                          (system.get("vram_free_mb") or system["vram_total_mb"]) / 1024)]
    ram = system.get("ram_available_mb")
    # The plan names the savers the run will choose, so it judges a CPU run against the RAM there.
    return local, ram / 1024 if ram else None


def job_status(job: dict) -> str:
    """'job 3 (train runs/long) is running, step 12/400': a job going on, in one line."""
    progress = job.get("progress") or {}
    step = f", step {progress['step']}/{progress['total']}" if progress.get("total") else ""
    return f"job {job['id']} ({job['kind']} {job.get('run_dir') or ''}".rstrip() + f") is {job['state']}{step}"


CLIENTS = "tui-clients"  # one empty file per running TUI of this LIKENESS_HOME, named by its pid


def live_clients(folder: Path) -> list[int]:
    """The pids of the TUIs still running on this home's local engine (stale files are removed)."""
    alive = []
    for entry in folder.glob("*") if folder.is_dir() else []:
        try:
            pid = int(entry.name)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            entry.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass  # alive, another user's: count it
        alive.append(pid)
    return alive


def _register(home: Path) -> None:
    folder = home / CLIENTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()


def _is_our_engine(pid: int) -> bool:
    # A recycled pid belongs to someone else: only a process running `engine serve` is ours to stop.
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"engine" in command and b"serve" in command


def stop_if_unneeded(state_file: Path, grace_s: float = 15) -> bool:
    """Stop the local engine in ``state_file`` when no TUI uses it and no job is queued or running."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        client = ServiceClient(state["url"], token=_read_token(state.get("token_file")))
        busy = any(job["state"] in ("running", "queued") for job in client.jobs())
    except LikenessError:
        busy = False  # not answering: stop it all the same if it is still there
    if busy or live_clients(state_file.parent / CLIENTS):  # a TUI may have arrived meanwhile
        return False
    pid = state.get("pid")
    if pid and _is_our_engine(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _is_our_engine(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_our_engine(pid):
            os.kill(pid, signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TOKEN_FILE = "tui-service.token"


def _read_token(path: str | None) -> str | None:
    try:
        return Path(path).read_text().strip() or None if path else None
    except OSError:
        return None


def _new_token_file(home: Path) -> Path:
    """A fresh token for this engine's life, in a file only this user can read (0600 from the start)."""
    path = home / TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return path


def photo_roots() -> str:
    """Where the TUI's own engine may read photos: where a user keeps them, not the whole disk."""
    roots = [str(Path.home()), "/media", "/mnt", f"/run/media/{os.environ.get('USER', '')}".rstrip("/"),
             tempfile.gettempdir()]
    extra = os.environ.get("LIKENESS_PHOTO_ROOTS", "")
    return os.pathsep.join(dict.fromkeys([*roots, *(part for part in extra.split(os.pathsep) if part.strip())]))


def _running_on_home(home: Path) -> EngineLink | None:
    """The service already running on this home (`likeness serve`, another TUI's engine), if it answers."""
    from engine.service.home_lock import running_service

    running = running_service(home)
    if running is None:
        return None
    client = ServiceClient(running.url, token=running.token())
    return EngineLink(client) if client.healthy() else None


def connect(server: str | None, settings: Settings | None = None, wait_s: float = 90) -> EngineLink:
    """Use ``server``; else the local service an earlier TUI started; else the service running on this
    home; else start one."""
    settings = settings or Settings()
    if server:
        client = ServiceClient(server)
        if not client.healthy():
            raise LikenessError(f"no likeness engine answers at {server}")
        return EngineLink(client)
    state = settings.home / "tui-service.json"
    if state.is_file():
        try:
            record = json.loads(state.read_text())
            client = ServiceClient(record["url"], token=_read_token(record.get("token_file")))
        except (OSError, ValueError, KeyError, TypeError):
            client = None
        if client is not None and client.healthy():
            _register(settings.home)
            return EngineLink(client, state_file=state)
    found = _running_on_home(settings.home)
    if found is not None:
        return found  # someone else's (not stopped when the TUI quits)
    port = _free_port()
    settings.home.mkdir(parents=True, exist_ok=True)
    token_file = _new_token_file(settings.home)
    env = {key: value for key, value in os.environ.items() if key != "LIKENESS_TOKEN"}
    env.update({"LIKENESS_HOME": str(settings.home), "LIKENESS_PHOTO_ROOTS": photo_roots(),
                "LIKENESS_TOKEN_FILE": str(token_file),
                # A base model folder or .safetensors file of the user's, as --base on the command line takes.
                "LIKENESS_MODEL_ROOTS": os.environ.get("LIKENESS_MODEL_ROOTS", str(Path.home()))})
    with open(settings.home / "tui-service.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = ServiceClient(f"http://127.0.0.1:{port}", token=_read_token(str(token_file)))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # Another TUI or `likeness serve` took the home a moment before ours could: use that one.
            found = _running_on_home(settings.home)
            if found is not None:
                return found
            raise LikenessError(f"the local engine exited; see {settings.home / 'tui-service.log'}")
        if client.healthy():
            state.write_text(json.dumps({"url": client.url, "pid": process.pid, "token_file": str(token_file)}))
            _register(settings.home)
            return EngineLink(client, process, state)
        time.sleep(0.3)
    process.kill()
    raise LikenessError("the local engine did not start within 90 seconds")


if __name__ == "__main__":
    # `python -m tui.engine_link STATE_FILE`: what a quitting TUI leaves behind to stop its engine.
    stop_if_unneeded(Path(sys.argv[1]))
