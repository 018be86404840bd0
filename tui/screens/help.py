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
| `1` | **Photos** | pick a folder or .zip, find and crop the person's face, see what was kept and why the rest was not |
| `2` | **Train** | pick the dataset and a preset (*Quick*: 500 steps, rank 16; *Large*: 1,500 steps, rank 32) and start |
| `3` | **Live run** | progress, loss, the newest sample grid (`[` / `]` for earlier ones), log; Cancel / Resume; Continue on Modal (`m`) after an out-of-memory |
| `4` | **Generate** | sweep age, LoRA strength, temperature…; the grid appears when done (`c` copies its path) |
| `5` | **Runs** | compare runs: images, steps, GPU, rank, time, cost, memory, loss; `space` marks two to see side by side |

`ctrl+p` opens the command palette; `q` quits (a running job keeps going in the engine).

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
