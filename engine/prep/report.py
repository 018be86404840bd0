"""DATASET/report.png: accepted crops first, then the rejected photos labelled with their reasons.

Each section shows at most MAX_TILES tiles and says how many more there are: a folder of 20,000
files must not make a 660-megapixel sheet nobody (Pillow included) can open. manifest.json lists
every file either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TILE = 160
LABEL = 32
GAP = 6
HEADING = 30
COLUMNS = 10
MAX_TILES = 200  # per section: 20 rows, a sheet of at most about 1666 x 8000 px
MORE = 24  # the "and N more" line under a section that was cut
BACKGROUND = (32, 32, 32)
ACCEPTED_COLOUR = (120, 220, 120)
REJECTED_COLOUR = (240, 120, 110)


@dataclass(frozen=True)
class SheetTile:
    """One thumbnail (a cached JPEG, or None for a file with nothing to show) and up to two lines of caption."""

    thumb: Path | None
    label: str


def contact_sheet(accepted: list[SheetTile], rejected: list[SheetTile]) -> Image.Image:
    """Two titled grids of thumbnails, one above the other, each cut at MAX_TILES."""
    font = _font(12)
    heading_font = _font(18)
    sections = [(f"Accepted ({len(accepted)})", accepted[:MAX_TILES], ACCEPTED_COLOUR, len(accepted))]
    if rejected:
        sections.append((f"Rejected ({len(rejected)})", rejected[:MAX_TILES], REJECTED_COLOUR, len(rejected)))
    cell_h = TILE + LABEL + GAP
    width = COLUMNS * (TILE + GAP) + GAP
    height = sum(HEADING + max(1, -(-len(tiles) // COLUMNS)) * cell_h + (MORE if total > len(tiles) else 0)
                 for _, tiles, _, total in sections) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = GAP
    for title, tiles, colour, total in sections:
        draw.text((GAP, y + 4), title, fill=colour, font=heading_font)
        y += HEADING
        for i, tile in enumerate(tiles):
            x = GAP + (i % COLUMNS) * (TILE + GAP)
            top = y + (i // COLUMNS) * cell_h
            _paste_thumb(sheet, draw, tile.thumb, x, top)
            for line_no, line in enumerate(tile.label.splitlines()[:2]):
                draw.text((x, top + TILE + 2 + 14 * line_no), _fit(draw, line, font), fill=colour, font=font)
        y += max(1, -(-len(tiles) // COLUMNS)) * cell_h
        if total > len(tiles):
            draw.text((GAP, y + 2), f"... and {total - len(tiles):,} more: manifest.json lists every file",
                      fill=colour, font=heading_font)
            y += MORE
    return sheet


def _paste_thumb(sheet: Image.Image, draw: ImageDraw.ImageDraw, thumb: Path | None, x: int, y: int) -> None:
    try:
        with Image.open(thumb) as image:  # type: ignore[arg-type]
            image = image.convert("RGB")
            image.thumbnail((TILE, TILE))
            sheet.paste(image, (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))
    except (OSError, AttributeError, TypeError):
        draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=(90, 90, 90), fill=(48, 48, 48))
        draw.line((x, y, x + TILE - 1, y + TILE - 1), fill=(90, 90, 90))


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    if draw.textlength(text, font=font) <= TILE:
        return text
    while text and draw.textlength(text + "…", font=font) > TILE:
        text = text[:-1]
    return text + "…"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()
