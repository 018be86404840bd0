"""Validation messages in a form's words: its labels for the engine's field names, and "must be at
most 4096" for pydantic's "Input should be less than or equal to 4096"."""

from __future__ import annotations

# Longest first: "greater than or equal to" must not read as "greater than".
_PHRASES = (
    ("Input should be less than or equal to", "must be at most"),
    ("Input should be greater than or equal to", "must be at least"),
    ("Input should be greater than", "must be more than"),
    ("Input should be less than", "must be less than"),
    ("Input should be a valid integer", "must be a whole number"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be", "must be"),
    ("String should have at most", "must have at most"),
    ("String should have at least", "must have at least"),
)


def plain(message: str) -> str:
    message = message.removeprefix("Value error, ")
    for theirs, ours in _PHRASES:
        if message.startswith(theirs):
            return ours + message[len(theirs):]
    return message


def in_form_words(text: str, labels: dict[str, str]) -> str:
    """'options.size: Input should be less than or equal to 4096' as 'Training size must be at most 4096'
    when ``labels`` names size; other text as it came, its phrasing made plain."""
    text = text.removeprefix("service: ")  # the client's word for "the engine refused it"
    field, sep, message = text.partition(": ")
    name = field.rsplit(".", 1)[-1]
    if not sep or " " in field or name not in labels:
        return plain(text)
    where, sep, rest = message.partition(": ")
    if sep and " " not in where:  # "runs/NAME: '-b' is not a valid name": the field's label says which
        message = rest
    return f"{labels[name]} {plain(message)}"
