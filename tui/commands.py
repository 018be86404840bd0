"""``likeness tui`` and ``likeness web``: the terminal interface, in a terminal or a browser."""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("tui", help="open the terminal interface (what `likeness` alone does)",
                              description="Photos -> Train -> Live run -> Generate -> Runs, in the terminal.")
    p.add_argument("--server", default=os.environ.get("LIKENESS_SERVER"), metavar="URL",
                   help="engine service to use (default $LIKENESS_SERVER; else one is started on this machine)")
    p.set_defaults(func=run_tui)
    w = subparsers.add_parser("web", help="serve the terminal interface to a browser (textual-serve)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    w.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    w.add_argument("--server", default=os.environ.get("LIKENESS_SERVER"), metavar="URL", help="engine service URL")
    w.add_argument("--public-url", default=None,
                   help="URL the browser uses, when behind a proxy or in a container; off loopback the page asks "
                        "for a key (printed with its URL) unless this URL is on loopback (a port published on "
                        "127.0.0.1 only)")
    w.set_defaults(func=run_web)


def run_tui(args: argparse.Namespace) -> int:
    from tui.app import LikenessApp
    from tui.engine_link import connect
    from tui.widgets.picture import probe_terminal

    probe_terminal()
    link = connect(args.server)
    try:
        LikenessApp(link).run()
        # Quitting does not stop a job: say which goes on, and how to see or cancel it.
        line = link.goodbye()
        if line:
            print(line)
    finally:
        link.close()
    # Textual has given the terminal back and nothing is left to tidy: the engine and its jobs run in
    # their own session, and close() handed stopping it to a detached process. The interpreter's own
    # teardown still took over 2 s here (in C, with 700 modules loaded, engine calls abandoned in
    # daemon threads), long enough for a quit to look like a hang; so leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_web(args: argparse.Namespace) -> int:
    from tui.web_server import make_server

    command = [sys.executable, "-m", "tui", "tui"] + (["--server", args.server] if args.server else [])
    make_server(shlex.join(command), args.host, args.port, args.public_url).serve()
    return 0
