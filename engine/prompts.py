"""Prompt templates: ``{name}`` placeholders filled with plain text, and nothing else.

Prompts come from users and from the API, so they are never ``str.format``ted: a format spec
(``{token:>1000000000}``) makes a gigabyte string on the event loop, and an attribute
(``{token.__class__}``) reaches into Python objects. Here a placeholder is a plain name in braces;
``{{`` and ``}}`` are literal braces, as in ``str.format``; anything else between braces is refused.
"""

from __future__ import annotations

import re

from engine.errors import LikenessError

# SDXL's text encoders read 77 tokens and the rest is cut with a warning; a prompt of many pages is a
# mistake or an attack, and is refused before anything is built from it.
MAX_PROMPT_CHARS = 20_000
_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def placeholders(template: str) -> list[str]:
    """The ``{names}`` in `template`, in order of first appearance; a one-line error for anything else."""
    if len(template) > MAX_PROMPT_CHARS:
        raise LikenessError(f"prompt is {len(template)} characters long; the limit is {MAX_PROMPT_CHARS}")
    names = []
    for match in _PIECE.finditer(template):
        piece = match.group(0)
        if piece in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None:
            raise LikenessError(f"prompt {template[:80]!r} is malformed: a lone {piece!r} (write {piece * 2} "
                                "for a brace)")
        if not name.isidentifier():
            raise LikenessError(f"prompt {template[:80]!r}: placeholder {{{name[:40]}}} must be a plain name "
                                "such as {token}")
        names.append(name)
    return list(dict.fromkeys(names))


def fill(template: str, values: dict[str, object]) -> str:
    """`template` with each placeholder replaced by its value as plain text (not formatted further)."""
    placeholders(template)

    def replace(match: re.Match) -> str:
        piece = match.group(0)
        if piece in ("{{", "}}"):
            return piece[0]
        name = match.group(1)
        if name not in values:
            raise LikenessError(f"unknown placeholder {{{name}}}: this prompt may use "
                                + ", ".join(f"{{{known}}}" for known in values))
        return str(values[name])

    return _PIECE.sub(replace, template)
