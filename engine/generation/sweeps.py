"""Prompt templates and sweeps: ``--sweep age=5,10,18`` over placeholders and sampling parameters."""

from __future__ import annotations

import itertools
import re
from typing import Any

from engine.errors import LikenessError
from engine.prompts import placeholders as prompt_placeholders

# Axes that are sampling parameters rather than prompt placeholders, with the type of their values.
PARAMETER_AXES: dict[str, type] = {
    "lora_scale": float,
    "temperature": float,
    "guidance": float,
    "seed": int,
    "steps": int,
    "step": int,  # a checkpoint step of the run
}


def placeholders(template: str) -> list[str]:
    """The ``{names}`` in a prompt template, in order of first appearance (engine.prompts: plain names only)."""
    return prompt_placeholders(template)


# A sweep starts where a NAME= follows the start, a space, a ";" or a new line: what separates two sweeps.
_SWEEP_START = re.compile(r"(?:^|(?<=[\s;]))[A-Za-z_]\w*\s*=")


def split_sweeps(text: str) -> list[str]:
    """Every sweep in one line, however they are separated.

    ``'lora_scale=0,0.5,1 temperature=0,1'``, ``'… ; …'``, one per line, and ``'age = 5, 10'`` are all
    what they look like: a new sweep begins at each NAME=, so a value may hold spaces
    (``hair=red hair,grey hair``) but not "=".
    """
    starts = [match.start() for match in _SWEEP_START.finditer(text)]
    if not starts:
        return [text.strip(" ;\n")] if text.strip(" ;\n") else []
    if text[:starts[0]].strip(" ;\n"):
        raise LikenessError(f"sweeps {text!r}: expected NAME=VALUE[,VALUE...], e.g. age=5,10,18")
    bounds = [*starts, len(text)]
    parts = (text[start:end].strip().rstrip(";,").strip() for start, end in itertools.pairwise(bounds))
    return [re.sub(r"\s*([=,])\s*", r"\1", part) for part in parts]


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``'age=5,10,18'`` -> ``('age', ['5', '10', '18'])``; parameter axes get typed values."""
    name, sep, values = text.partition("=")
    name = name.strip()
    items = [v.strip() for v in values.split(",")] if sep else []
    if not name or not items or any(v == "" for v in items):
        raise LikenessError(f"--sweep {text!r}: expected NAME=VALUE[,VALUE...], e.g. age=5,10,18")
    kind = PARAMETER_AXES.get(name)
    if kind is None:
        return name, items
    try:
        typed = [kind(v) for v in items]
    except ValueError:
        raise LikenessError(f"--sweep {name}: values must be {kind.__name__} numbers, got {values}") from None
    if name == "temperature" and any(not 0 <= v <= 1 for v in typed):
        raise LikenessError("--sweep temperature: values must lie in 0..1")
    if name == "lora_scale" and any(v < 0 for v in typed):
        raise LikenessError("--sweep lora_scale: values must be >= 0")
    if name in ("steps", "seed") and any(v < (1 if name == "steps" else 0) for v in typed):
        raise LikenessError(f"--sweep {name}: values out of range")
    return name, typed


def expand(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def check_template(template: str, axes: dict[str, list[Any]], fixed: dict[str, str]) -> None:
    """Every placeholder needs a value; every non-parameter axis must be a placeholder."""
    names = placeholders(template)
    for name in names:
        if name not in axes and name not in fixed:
            raise LikenessError(f"prompt placeholder {{{name}}} has no value: add --sweep {name}=...")
    for name in axes:
        if name not in PARAMETER_AXES and name not in names:
            raise LikenessError(
                f"--sweep {name}: not a placeholder in the prompt and not one of {', '.join(PARAMETER_AXES)}"
            )
