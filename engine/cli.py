"""The ``likeness`` command line: one sub-command per module under ``engine/commands``.

Only argparse loads here; each command imports its heavy machinery when it runs, so
``likeness --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from engine import __version__
from engine.errors import LikenessError

# Sub-command modules, in the order `likeness --help` lists them. Each has
# `register(subparsers)`, which adds its parser and sets `run` as the default `func`.
COMMANDS = ("demo", "prep", "train", "generate", "export", "serve", "jobs")


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes on one line like every other (it prints the usage, then the error)."""

    def error(self, message: str):
        self.exit(2, f"likeness: error: {message} (see {self.prog} --help)\n")


def build_parser(extra_commands: Sequence[ModuleType] = ()) -> argparse.ArgumentParser:
    """The parser for every engine command, plus ``extra_commands`` (modules with ``register``).

    The terminal UI adds its own commands this way, so the engine never imports it.
    """
    parser = _Parser(
        prog="likeness",
        description="Teach SDXL what one person looks like, then make new pictures of them.",
    )
    parser.add_argument("--version", action="version", version=f"likeness {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"engine.commands.{name}").register(subparsers)
    for module in extra_commands:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None, extra_commands: Sequence[ModuleType] = (),
         default_command: str | None = None) -> int:
    parser = build_parser(extra_commands)
    argv = sys.argv[1:] if argv is None else argv
    if not argv and default_command is not None:
        argv = [default_command]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except LikenessError as error:
        print(f"likeness: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("likeness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
