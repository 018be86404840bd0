"""The ``likeness`` console script: the engine's commands plus ``tui`` and ``web``; no command opens the TUI."""

from __future__ import annotations

import sys

from engine.cli import main as engine_main


def main(argv: list[str] | None = None) -> int:
    from tui import commands

    return engine_main(argv, extra_commands=[commands], default_command="tui")


if __name__ == "__main__":
    sys.exit(main())
