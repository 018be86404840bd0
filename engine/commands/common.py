"""What the sub-commands share: typed configs from flags + config files, and the progress bar."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine.commands.config_file import read_config_file
from engine.errors import LikenessError

M = TypeVar("M", bound=BaseModel)


def build_config(model: type[M], args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> M:
    """Defaults < ``--config FILE`` < flags given on the command line; errors become one line."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        values.update(read_config_file(Path(config_file)))
    # Flags use argparse.SUPPRESS as default, so only what the user typed is in the namespace.
    values.update({k: v for k, v in vars(args).items() if k in model.model_fields})
    values.update(overrides or {})
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "config"
        message = first["msg"].removeprefix("Value error, ")
        raise LikenessError(f"--{field.replace('_', '-')}: {message}") from None


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML or YAML file with any of these options (flags given here win)")


def flag(parser: argparse.ArgumentParser, name: str, *, help: str, **kwargs) -> None:
    """An option whose absence leaves the config's default (or the config file's value) in place."""
    parser.add_argument(name, default=argparse.SUPPRESS, help=help, **kwargs)


def switch(parser: argparse.ArgumentParser, name: str, *, help: str) -> None:
    """A boolean option with its --no- twin, absent unless given."""
    parser.add_argument(name, default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction, help=help)
