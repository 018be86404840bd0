"""``likeness serve``: the engine as a local job service (HTTP API, SSE events, SQLite queue)."""

from __future__ import annotations

import argparse

from engine.commands.common import flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the engine as a job service (HTTP API) for the TUI, the CLI and scripts",
        description="Keep training, generation and prep running as jobs, independent of any terminal: "
                    "a queue in LIKENESS_HOME/jobs.sqlite3, one GPU job at a time, events as SSE, "
                    "OpenAPI docs at /docs. Binding to anything but loopback needs LIKENESS_TOKEN.")
    flag(p, "--host", help="address to bind (default 127.0.0.1, or LIKENESS_HOST)")
    flag(p, "--port", type=int, help="port (default 8000, or LIKENESS_PORT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from engine.errors import LikenessError
    from engine.service.api import serve
    from engine.service.config import ServiceConfig
    from engine.settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k in ("host", "port")}
    try:
        config = ServiceConfig(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        raise LikenessError(f"--{first['loc'][0]}: {first['msg']}") from None
    serve(Settings(), config)
    return 0
