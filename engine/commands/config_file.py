"""Reading ``--config FILE`` (TOML or YAML) into plain values for a typed config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from engine.errors import LikenessError


def read_config_file(path: Path) -> dict[str, Any]:
    """Return the file's top-level table, with dashes in keys turned into underscores."""
    if not path.is_file():
        raise LikenessError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise LikenessError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise LikenessError(f"config file {path} is not valid: {str(error).splitlines()[0]}") from None
    except Exception as error:  # yaml.YAMLError, without importing yaml at module level
        if type(error).__module__.startswith("yaml"):
            raise LikenessError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        raise
    if not isinstance(data, dict):
        raise LikenessError(f"config file {path} must hold a table of settings at the top level")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
