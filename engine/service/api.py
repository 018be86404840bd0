"""The HTTP API (FastAPI; OpenAPI at /docs). Routes only delegate to the queue, the catalog and
the submission checks; errors come back as {"detail": "one line"} and never as a traceback.
"""

from __future__ import annotations

import asyncio
import mimetypes
import sys
import threading
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import __version__
from engine.errors import LikenessError
from engine.service import catalog, docs_page, submission
from engine.service.config import ServiceConfig
from engine.service.connections import connection_limits, guarded_protocol, log_resource_errors_once
from engine.service.cuda_check import no_cuda_line
from engine.service.errors import Conflict, InvalidField, NotFound, ServiceError
from engine.service.head import HeadAsGet
from engine.service.home_lock import HomeLock
from engine.service.models import (
    FINAL_STATES,
    NAME_PATTERN,
    DatasetRequest,
    DatasetSummary,
    Job,
    JobEvent,
    JobKind,
    JobRequest,
    JobState,
    ResumeRequest,
    RunSummary,
    SystemInfo,
    TrainJobRequest,
)
from engine.service.runner import JobRunner
from engine.service.security import BodyTooLarge, Guard
from engine.service.sqlite_queue import DB_FILENAME, SqliteJobQueue
from engine.service.stalls import with_notes
from engine.service.system import system_info
from engine.settings import Settings

# Python's table lacks some of the formats photos come in; a wrong type makes browsers download.
_CONTENT_TYPES = {".webp": "image/webp", ".heic": "image/heic", ".jsonl": "application/x-ndjson",
                  ".safetensors": "application/octet-stream", ".log": "text/plain"}
STREAM_POLL_S = 0.2
KEEPALIVE_S = 15.0

# SQLite integers are 64-bit: a larger id is simply no job, not an overflow deep in the driver.
MAX_ID = 2**63 - 1
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A job's id.")]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, description="A dataset or run name (one plain segment).")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"detail": "one line"}}}}
    for code, text in ((400, "Bad request"), (401, "Missing or wrong token"), (403, "Path outside its folder"),
                       (404, "Not found"), (409, "Conflicts with a job or run"), (413, "Too large"),
                       (422, "Invalid config: field and reason"))}


def create_app(settings: Settings, config: ServiceConfig, token: str | None) -> FastAPI:
    """The service for LIKENESS_HOME = `settings.home`; `token` None means loopback without a token."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    queue = SqliteJobQueue(home / DB_FILENAME, keep_open=True)
    runner = JobRunner(queue, settings, cancel_grace_s=config.cancel_grace_s)
    limits = {"model_roots": config.model_root_paths, "reserve_mb": config.min_free_mb}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log_resource_errors_once(asyncio.get_running_loop())
        runner.start()
        try:
            yield
        finally:
            await run_in_threadpool(runner.stop)

    # docs_url/redoc_url off: FastAPI's pages load their scripts from a CDN; /docs is drawn here instead.
    app = FastAPI(title="likeness", version=__version__, lifespan=lifespan, responses=ERRORS,
                  docs_url=None, redoc_url=None,
                  description="DreamBooth + LoRA training of SDXL as a job service: jobs, their events (SSE), "
                              "datasets and runs. Paths in configs are relative to LIKENESS_HOME and stay inside it.")
    app.add_middleware(Guard, token=token, upload_limit=config.max_upload_bytes, bind_host=config.host)
    app.add_middleware(HeadAsGet)  # outermost: a HEAD is a GET for every check after it
    _error_handlers(app)

    # -- system --------------------------------------------------------------------------

    @app.get("/health", tags=["system"])
    def health() -> dict[str, str]:
        """Liveness for container health checks; needs no token."""
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_page.render(app.openapi()), headers={"Content-Security-Policy": docs_page.POLICY})

    @app.get("/system", tags=["system"])
    def system() -> SystemInfo:
        """Device, GPU and free/total VRAM, library versions, whether Modal is configured."""
        return system_info(home)

    # -- jobs ----------------------------------------------------------------------------

    @app.post("/jobs", status_code=201, tags=["jobs"])
    def submit_job(request: JobRequest) -> Job:
        """Queue a prep, train or generate job with its typed config."""
        placement = (request.where, request.gpu) if isinstance(request, TrainJobRequest) else ("auto", None)
        job = submission.accept(request.kind, request.config, home, queue, config.photo_root_paths, *placement,
                                **limits)
        runner.wake()
        return job

    @app.get("/jobs", tags=["jobs"])
    def list_jobs(state: JobState | None = None, kind: JobKind | None = None) -> list[Job]:
        """Jobs, newest first; a running job making no progress says so in `stalled`, a queued one
        what it waits for in `waiting`."""
        return with_notes(queue.list(state=state, kind=kind), queue)

    @app.get("/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: JobId) -> Job:
        return with_notes([queue.get(job_id)], queue)[0]

    @app.post("/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: JobId) -> Job:
        """A queued job is cancelled at once; a running one stops at its next step boundary."""
        return queue.request_cancel(job_id)

    @app.post("/jobs/{job_id}/resume", tags=["jobs"])
    def resume_job(job_id: JobId, request: ResumeRequest | None = None) -> Job:
        """A new attempt of an interrupted, cancelled or failed train job, from its newest checkpoint.

        The body may move it: `{"where": "modal"}` carries a run that ran out of GPU memory here on
        to a cloud GPU."""
        request = request or ResumeRequest()
        job = queue.get(job_id)
        config = submission.resume_config(job, home, request.where, _started_run(queue, job_id))
        if job.run_dir in queue.active_run_dirs():
            raise Conflict(f"{job.run_dir} is in use by another queued or running job")
        job = queue.requeue(job_id, config, request.where, request.gpu)
        runner.wake()
        return job

    @app.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"description": "Server-Sent Events: `id` (per-job, increasing), `event` (the type), "
                                             "`data` (a JobEvent as JSON)",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def job_events(
        request: Request,
        job_id: JobId,
        after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Send events with ids above this.")] = None,
        follow: Annotated[bool, Query(description="Keep streaming until the job ends.")] = True,
        last_event_id: Annotated[str | None, Header(description="The id of the last event seen (reconnect).")] = None,
    ):
        """The job's events as SSE; reconnect with Last-Event-ID to get exactly the ones missed."""
        await run_in_threadpool(queue.get, job_id)  # 404 now, not inside a stream
        start = after or 0
        if last_event_id is not None and last_event_id.strip():  # an empty header is no header
            if not last_event_id.strip().isdigit() or int(last_event_id) > MAX_ID:
                raise ServiceError("Last-Event-ID must be the id (a whole number) of an event")
            start = int(last_event_id)
        return StreamingResponse(_stream(queue, job_id, start, follow, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/jobs/{job_id}/log", tags=["jobs"], response_class=PlainTextResponse)
    def job_log(job_id: JobId) -> PlainTextResponse:
        """The worker's output (engine log lines, and the traceback of an unexpected failure)."""
        job = queue.get(job_id)
        path = home / job.log if job.log else None
        if path is None or not path.is_file():
            raise NotFound(f"job {job_id} has no log yet")
        return PlainTextResponse(path.read_text(errors="replace"))

    # -- datasets ------------------------------------------------------------------------

    @app.get("/datasets", tags=["datasets"])
    def list_datasets() -> list[DatasetSummary]:
        return catalog.list_datasets(home)

    @app.post("/datasets", status_code=201, tags=["datasets"])
    def create_dataset(request: DatasetRequest) -> Job:
        """Queue prep of photos the engine can see (inside LIKENESS_HOME or LIKENESS_PHOTO_ROOTS) into datasets/NAME."""
        job = submission.accept_dataset(request.name, Path(request.photos), request.options, home, queue,
                                        config.photo_root_paths)
        runner.wake()
        return job

    @app.post("/datasets/{name}/upload", status_code=201, tags=["datasets"])
    def upload_dataset(
        name: Name,
        files: Annotated[list[UploadFile], File(description="Photos, or .zip exports.")],
        options: Annotated[str | None, Form(description="PrepConfig fields as a JSON object.")] = None,
    ) -> Job:
        """Store uploaded photos in uploads/NAME and queue prep into datasets/NAME."""
        job = submission.accept_upload(name, [(f.filename, f.file) for f in files], options, home, queue,
                                       config.max_upload_files)
        runner.wake()
        return job

    @app.get("/datasets/{name}", tags=["datasets"])
    def get_dataset(name: Name) -> dict[str, Any]:
        """The dataset's manifest: every photo, accepted or rejected with its reason."""
        return catalog.dataset_manifest(home, name)

    @app.get("/datasets/{name}/manifest", tags=["datasets"])
    def dataset_manifest(name: Name) -> dict[str, Any]:
        return catalog.dataset_manifest(home, name)

    @app.get("/datasets/{name}/report", tags=["datasets"], response_class=FileResponse)
    def dataset_report(name: Name) -> FileResponse:
        """The contact sheet (PNG) of accepted and rejected photos."""
        return _file(catalog.dataset_file(home, name, "report.png"))

    @app.get("/datasets/{name}/files/{path:path}", tags=["datasets"], response_class=FileResponse)
    def dataset_file(name: Name, path: str) -> FileResponse:
        return _file(catalog.dataset_file(home, name, path))

    # -- runs ----------------------------------------------------------------------------

    @app.get("/runs", tags=["runs"])
    def list_runs() -> list[RunSummary]:
        """Runs with the fields of run.json they are compared by, and runs whose train job ended
        before writing one (a failed start), with the job's state and why."""
        return catalog.with_jobs(catalog.list_runs(home), queue.list(kind="train"))

    @app.get("/runs/{name}", tags=["runs"])
    def get_run(name: Name) -> dict[str, Any]:
        """Summary, the whole run.json, sample grids, checkpoints and generations."""
        return catalog.run_detail(home, name)

    @app.get("/runs/{name}/metrics", tags=["runs"])
    def run_metrics(name: Name) -> list[dict[str, Any]]:
        """metrics.jsonl: loss, lr, s/step, peak memory per step."""
        return catalog.run_metrics(home, name)

    @app.get("/runs/{name}/lora", tags=["runs"], response_class=FileResponse)
    def run_lora(name: Name) -> FileResponse:
        """Download the final LoRA (kohya's layout, which ComfyUI, A1111, Forge and diffusers load)."""
        path = catalog.run_file(home, name, "lora.safetensors")
        return _file(path, download=f"{name}.safetensors")

    @app.get("/runs/{name}/files/{path:path}", tags=["runs"], response_class=FileResponse)
    def run_file(name: Name, path: str) -> FileResponse:
        """Any file of the run: samples/step-000100.png, generations/.../images/0000.png, ..."""
        target = catalog.run_file(home, name, path)
        return _file(target, download=target.name if target.suffix == ".safetensors" else None)

    app.state.queue = queue
    app.state.runner = runner
    return app


def _started_run(queue: SqliteJobQueue, job_id: int) -> str | None:
    """The run id the job's newest "started" event names (the run its folder held for it), if any."""
    last, run_id = 0, None
    while batch := queue.events(job_id, last):
        for event in batch:
            if event.type == "started" and isinstance(event.data.get("run_id"), str):
                run_id = event.data["run_id"]
        last = batch[-1].id
    return run_id


def _file(path: Path, download: str | None = None) -> FileResponse:
    media = _CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, filename=download)


async def _stream(queue: SqliteJobQueue, job_id: int, last: int, follow: bool, request: Request):
    """SSE frames of the job's events after `last`, until the job has ended and all are sent."""
    yield "retry: 2000\n\n"  # how long a browser's EventSource waits before it reconnects
    quiet = 0.0
    while True:
        # The job row first, then the events: a final state read here has its final event already
        # committed (same transaction), so the read after it cannot miss it.
        try:
            job = await run_in_threadpool(queue.get, job_id)
            events: list[JobEvent] = await run_in_threadpool(queue.events, job_id, last)
        except LikenessError:
            # The job's row is gone (the database was deleted) or cannot be read: the stream ends
            # here and a reconnecting client gets the answer as a status.
            return
        for event in events:
            yield f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"
            last = event.id
        if events:
            quiet = 0.0
            continue
        if not follow or (job.state in FINAL_STATES and job.last_event_id <= last):
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(STREAM_POLL_S)
        quiet += STREAM_POLL_S
        if quiet >= KEEPALIVE_S:  # a comment line keeps proxies from closing an idle stream
            quiet = 0.0
            yield ": keep-alive\n\n"


def _allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _field(loc: tuple | list) -> str:
    # ("body", "train", "config", "steps") -> "config.steps": the body and the union's tag say nothing.
    parts = [str(p) for p in loc if p != "body"]
    if len(parts) > 1 and parts[0] in ("train", "generate", "prep"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            reason = next(p for p in problems if p.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"malformed JSON: {reason}".strip()}, status_code=400)
        listed = [{"field": _field(p.get("loc", ())), "reason": str(p.get("msg", "invalid")).removeprefix(
            "Value error, ")} for p in problems]
        first = listed[0] if listed else {"field": "body", "reason": "invalid"}
        return JSONResponse({"detail": f"{first['field']}: {first['reason']}", "errors": listed}, status_code=422)

    @app.exception_handler(LikenessError)
    async def refused(_request: Request, error: LikenessError) -> JSONResponse:
        status = error.status if isinstance(error, ServiceError) else 400
        body: dict[str, Any] = {"detail": str(error).splitlines()[0] if str(error) else type(error).__name__}
        if isinstance(error, InvalidField):
            body["errors"] = [{"field": error.field, "reason": error.reason}]
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names the methods of the first route that matched the path only; /jobs has two.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return JSONResponse({"detail": str(error.detail)}, status_code=error.status_code, headers=headers)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_request: Request, error: BodyTooLarge) -> JSONResponse:
        # error.detail, not str(error): an HTTPException's str repeats the status ("413: ...").
        return JSONResponse({"detail": error.detail}, status_code=413)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # The traceback goes to the service's own output, never into a response body.
        traceback.print_exception(error, file=sys.stderr)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}) in {request.url.path}; "
                                       "see the service's output"}, status_code=500)


def _say_if_no_cuda() -> None:
    line = no_cuda_line()
    if line:
        print(line, file=sys.stderr, flush=True)


def serve(settings: Settings, config: ServiceConfig) -> None:
    """Run the service in the foreground until Ctrl-C / SIGTERM; running jobs become interrupted."""
    import socket

    import uvicorn

    token = config.checked_token()
    # Before anything touches the queue: a second service on this home would take the first's running
    # jobs for a crash's leftovers and end them. (First of all, so that a second `likeness serve` on
    # the same port is told which service has this home, not only that the port is taken.)
    lock = HomeLock(settings.home)
    token_file = config.token_file if token and not config.token else None
    lock.acquire(client_url(config.host, config.port), token_file)
    try:
        # Check the port before anything starts: uvicorn's own message is a multi-line log record.
        with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, config.port))
            except OSError as error:
                raise LikenessError(f"cannot listen on {config.host}:{config.port}: "
                                    f"{error.strerror or error}") from None
        where = f"http://{config.host}:{config.port}"
        app = create_app(settings, config, token)
        print(f"likeness service on {where} (API docs at {where}/docs), LIKENESS_HOME={settings.home}"
              + ("; token required" if token else ""), file=sys.stderr, flush=True)
        # Asked beside the server, not before it: the answer can take seconds, and no GPU is no reason
        # not to serve (a crash here would loop under compose's `restart: unless-stopped`).
        threading.Thread(target=_say_if_no_cuda, name="cuda-check", daemon=True).start()
        # h11 with a deadline on headers and a cap on open connections (engine.service.connections): slow
        # clients cannot starve the service or fill its log.
        limits = connection_limits(config.header_timeout_s)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=3,
                    http=guarded_protocol(limits), timeout_keep_alive=5)
    finally:
        lock.release()


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a service bound to `host` at."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

