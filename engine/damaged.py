"""Reading the JSON files a run or dataset folder holds, when any of them may be damaged.

A disk that filled, a sync tool's conflict copy or a hand edit can leave run.json, manifest.json or
a sample's scores as anything at all: not UTF-8, not JSON, or JSON of the wrong shape. Whoever lists
many folders reads each through here and gets either the object or one line saying why not, so one
damaged folder is shown as damaged instead of failing the whole list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DamagedFile(Exception):
    """A file that is there but cannot be read as what it should be; the message says why, in one line."""


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; DamagedFile (one line) when it is not UTF-8, not JSON or not an object.

    A missing file raises FileNotFoundError as usual: not there is not damaged."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DamagedFile(f"{path.name} is not UTF-8 text (byte {error.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DamagedFile(f"{path.name} is not valid JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise DamagedFile(f"{path.name} is nested too deeply to read") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{path.name} holds {_kind(value)}, not an object")
    return value


def json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The object lines of a JSON-lines file, and how many lines were not objects (cut short, not UTF-8, `1`)."""
    rows, bad = [], 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(
        type(value), "a number")
