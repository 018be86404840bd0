"""Labelled image grids: column headers across the top, row headers down the left."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def labelled_grid(
    rows: list[list[Image.Image]],
    row_labels: list[str],
    column_labels: list[str],
    title: str | None = None,
    cell_labels: list[list[str]] | None = None,
) -> Image.Image:
    """Lay ``rows`` (equal-sized images) out as a grid with every row and column named.

    ``cell_labels`` (same shape as ``rows``) are written on a strip at the foot of each image.
    """
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one image")
    cell_w, cell_h = rows[0][0].size
    font_size = max(10, min(28, cell_w // 10))
    font = _font(font_size)
    line_h = font_size + 4
    chars_per_line = max(8, int(cell_w / (font_size * 0.55)))
    wrapped_cols = [textwrap.wrap(label, chars_per_line) or [""] for label in column_labels]
    # The row labels (a sample grid's prompts) take at most 40 % of the grid's width, so the pictures
    # keep most of it when the grid is shrunk into a terminal; a label too long for its row ends in "…"
    # (the PNG's Description text keeps every label whole).
    cells_w = cell_w * max(len(r) for r in rows)
    fits = int((cells_w * 2 / 3 - 16) / (font_size * 0.55))
    row_chars = max(8, min(32, fits, max((len(label) for label in row_labels), default=10)))
    lines_per_row = max(1, (cell_h - 4) // line_h)
    wrapped_rows = [_clip(textwrap.wrap(label, row_chars) or [""], lines_per_row) for label in row_labels]
    left = int(row_chars * font_size * 0.55) + 16 if any(row_labels) else 0
    width = left + cell_w * max(len(r) for r in rows)
    # The title wraps to the grid's width: a long prompt stays whole on a narrow grid.
    title_lines = textwrap.wrap(title, max(16, int((width - 16) / (font_size * 0.55)))) if title else []
    top_title = len(title_lines) * line_h + 8 if title else 0
    top = top_title + (max(len(w) for w in wrapped_cols) * line_h + 8 if any(column_labels) else 0)
    height = top + cell_h * len(rows)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((8, 4 + i * line_h), line, fill=_INK, font=font)
    for c, lines in enumerate(wrapped_cols):
        for i, line in enumerate(lines):
            draw.text((left + c * cell_w + 4, top_title + 4 + i * line_h), line, fill=_INK, font=font)
    for r, row in enumerate(rows):
        for i, line in enumerate(wrapped_rows[r] if r < len(wrapped_rows) else []):
            draw.text((6, top + r * cell_h + 4 + i * line_h), line, fill=_INK, font=font)
        for c, image in enumerate(row):
            x, y = left + c * cell_w, top + r * cell_h
            canvas.paste(image.convert("RGB").resize((cell_w, cell_h)), (x, y))
            label = cell_labels[r][c] if cell_labels else ""
            if label:
                small = _font(max(8, font_size - 2))
                draw.rectangle((x, y + cell_h - font_size - 2, x + cell_w - 1, y + cell_h - 1), fill=_BACKGROUND)
                draw.text((x + 3, y + cell_h - font_size - 1), label, fill=_INK, font=small)
    # Said again as text, for whatever cannot read small print: the TUI's caption, an image viewer.
    if title:
        canvas.info["Title"] = title
    canvas.info["Description"] = grid_description(row_labels, column_labels)
    return canvas


def grid_description(row_labels: list[str], column_labels: list[str]) -> str:
    """What a grid's rows and columns are, in one line of text."""
    parts = [f"{name}: " + " | ".join(labels) for name, labels in (("rows", row_labels), ("columns", column_labels))
             if any(labels)]
    return "; ".join(parts)


def _clip(lines: list[str], most: int) -> list[str]:
    if len(lines) <= most:
        return lines
    return [*lines[:most - 1], lines[most - 1][:-1].rstrip() + "…"]


def save_png_atomically(image: Image.Image, path: Path, pnginfo=None) -> None:
    """Write to a temporary name and rename, so a watcher never reads half a PNG; a grid's title
    and description go in as PNG text."""
    if pnginfo is None and any(key in image.info for key in ("Title", "Description")):
        from PIL.PngImagePlugin import PngInfo

        pnginfo = PngInfo()
        for key in ("Title", "Description"):
            if image.info.get(key):
                pnginfo.add_itxt(key, image.info[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG", pnginfo=pnginfo)
    os.replace(partial, path)
