"""A picture in the terminal: Kitty graphics or Sixel where the terminal has them, half-blocks elsewhere."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import Static


class Picture(Container):
    """Shows a PIL image, or a line of text saying why there is none yet."""

    DEFAULT_CSS = """
    Picture { height: 1fr; min-height: 8; }
    Picture > .picture--empty { color: $text-muted; content-align: center middle; height: 1fr; }
    """

    def __init__(self, empty_text: str = "no picture yet", **kwargs) -> None:
        super().__init__(**kwargs)
        self.empty_text = empty_text

    def compose(self) -> ComposeResult:
        yield Static(self.empty_text, classes="picture--empty")

    def show(self, image: PILImage.Image | bytes | None, caption: str | None = None) -> None:
        from textual_image.widget import Image as ImageWidget

        self.remove_children()
        if image is None:
            self.mount(Static(caption or self.empty_text, classes="picture--empty"))
            return
        if isinstance(image, bytes):
            image = PILImage.open(io.BytesIO(image))
        self.mount(ImageWidget(image.convert("RGB")))
