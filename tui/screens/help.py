"""The help dialog: what each screen is for and its keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# likeness

From a photo folder to pictures of one person, in five screens:

| key | screen | what it does |
|---|---|---|
| `1` | **Photos** | type or paste a folder or .zip and press enter (or `b` to browse); see every photo's verdict; `u` takes the size hint when photos are too small |
| `2` | **Train** | pick the dataset and a preset (*Quick*: 500 steps, rank 16; *Large*: 1,500 steps, rank 32) or your own numbers; the line below says where it runs, how long, what it costs; `s` starts |
| `3` | **Live run** | the job you follow (`j` picks another), its phase, progress and ETA, the newest sample grid (`[` / `]` for earlier ones, `f` full-screen), loss and log; Cancel (`c`, asks first) / Resume (`r`); Continue on Modal (`m`) after an out-of-memory |
| `4` | **Generate** | sweep age, LoRA strength, temperature…; the grid appears when done (`f` full-screen, `c` copies its path) |
| `5` | **Runs** | compare runs: dataset, resolution, status, images, steps, GPU, rank, time, cost, memory, loss; `space` marks two to see side by side |

`escape` leaves a text field, so the keys above work again. `ctrl+p` opens the command palette; `q`
quits at once (a running job keeps going in the engine, and the next `likeness` shows it).

*lora_scale* 0 is the base model, 1 the trained LoRA. *temperature* 0 is deterministic sampling
(DDIM, the "safe" picture), 1 the most varied.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; height: 80%; border: thick $primary; background: $surface; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
