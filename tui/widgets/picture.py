"""A picture in the terminal: Kitty graphics or Sixel where the terminal has them, coloured half-blocks elsewhere."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.screen import ModalScreen
from textual.widgets import Static


def probe_terminal() -> None:
    """Let textual-image ask the terminal what it can draw, before Textual takes the terminal over.

    Imported later (the first time a picture is shown), its queries are answered while Textual reads
    the keyboard, and the answers arrive as keys: a "?" in one of them opened the help in tmux.
    """
    import textual_image.widget  # noqa: F401  (the import is the probe)


def image_widget_class():
    """The best picture widget for where the app is drawn.

    textual-image picks Sixel or Kitty graphics when the terminal answers its query, half-blocks in any
    other terminal, and a greyscale character ramp when stdout is not a terminal at all. The last is
    what `likeness web` gets (textual-serve runs the app on a pipe): its xterm.js page draws neither
    Sixel nor Kitty graphics, but colours every cell, so coloured half-blocks are the best it can show.
    """
    from textual_image.renderable import Image as ChosenRenderable
    from textual_image.renderable.unicode import Image as GreyRenderable
    from textual_image.widget import HalfcellImage, Image

    # The widget module's `Image` is its AutoImage class whatever it chose, so ask the renderable
    # module which drawing it picked: its grey character ramp means "not a terminal".
    return HalfcellImage if ChosenRenderable is GreyRenderable else Image


class Picture(Container, can_focus=True):
    """Shows a PIL image, or a line of text saying why there is none yet; enter or f shows it full-screen."""

    DEFAULT_CSS = """
    Picture { height: 1fr; min-height: 8; }
    Picture:focus { border: tall $accent; }
    Picture { align: center middle; }
    Picture > .picture--empty { color: $text-muted; content-align: center middle; height: 1fr; }
    Picture > .picture--image { width: auto; height: auto; }
    Picture > .picture--caption { width: 100%; height: auto; color: $text-muted; }
    """
    BINDINGS = [Binding("enter,f", "full_screen", "Full screen")]

    def __init__(self, empty_text: str = "no picture yet", **kwargs) -> None:
        super().__init__(**kwargs)
        self.empty_text = empty_text
        self.image: PILImage.Image | None = None
        self.caption: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.empty_text, classes="picture--empty")

    def show(self, image: PILImage.Image | bytes | None, caption: str | None = None) -> None:
        self.remove_children()
        if image is None:
            self.image, self.caption = None, None
            self.mount(Static(caption or self.empty_text, classes="picture--empty"))
            return
        if isinstance(image, bytes):
            image = PILImage.open(io.BytesIO(image))
        # A grid's title and row and column labels, as its PNG text has them: small print drawn in
        # half-blocks is unreadable, terminal text is not.
        words = [image.info.get(key) for key in ("Title", "Description")]
        self.caption = "\n".join(str(w) for w in words if w) or None
        self.image = image.convert("RGB")
        if self.caption:
            self.mount(Static(self.caption, classes="picture--caption", markup=False))
        self.mount(image_widget_class()(self.image, classes="picture--image"))

    def action_full_screen(self) -> None:
        if self.image is not None:
            self.app.push_screen(FullPicture(self.image, self.caption))
        else:
            self.notify("no picture yet", severity="warning")


class FullPicture(ModalScreen[None]):
    """One picture over the whole terminal; any of escape, enter, f or q closes it."""

    DEFAULT_CSS = """
    FullPicture { background: $background; }
    FullPicture { align: center middle; }
    FullPicture > Static { height: auto; color: $text-muted; }
    FullPicture > Container { height: 1fr; align: center middle; }
    FullPicture .picture--image { width: auto; height: auto; }
    """
    BINDINGS = [Binding("escape,enter,f,q", "dismiss", "Close")]

    def __init__(self, image: PILImage.Image, caption: str | None = None) -> None:
        super().__init__()
        self.image, self.caption = image, caption

    def compose(self) -> ComposeResult:
        size = f"{self.image.width}×{self.image.height} px · escape closes"
        yield Static(f"{self.caption}\n{size}" if self.caption else size, markup=False)
        # Sized by its own aspect within the space left: a height of 1fr stretched a wide contact
        # sheet 2.2x down the screen.
        with Container():
            yield image_widget_class()(self.image, classes="picture--image")
