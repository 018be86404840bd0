"""Generate: a run and checkpoint, a prompt template and sweeps; the grid appears when done."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from tui.messages import JobEvent
from tui.screens.base import EngineScreen
from tui.widgets.picture import Picture

PRESETS = {
    "age": ("a photo of {token} {class_word} at age {age}", "age=5,10,18,25,50,80"),
    "strength": ("a photo of {token} {class_word}", "lora_scale=0,0.25,0.5,0.75,1"),
    "temperature": ("a photo of {token} {class_word}", "temperature=0,0.25,0.5,0.75,1"),
}


def parse_sweeps(text: str) -> list[str]:
    """'age=5,10; lora_scale=0,1' -> ['age=5,10', 'lora_scale=0,1'] (the engine checks each)."""
    return [part.strip() for part in text.replace("\n", ";").split(";") if part.strip()]


class GenerateScreen(EngineScreen):
    BINDINGS = [("g", "generate", "Generate"), ("c", "copy_path", "Copy grid path"), ("r", "refresh", "Refresh")]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Vertical(classes="panel"):
            yield Label("Generate", classes="panel--title")
            with Horizontal(classes="form"):
                yield Label("Run")
                yield Select([], prompt="train one first (2)", id="run")
                yield Label("Checkpoint step")
                yield Input(placeholder="final", id="step", type="integer")
                yield Label("Preset")
                yield Select([("age 5 → 80", "age"), ("strength 0 → 1", "strength"),
                              ("temperature 0 → 1", "temperature")], value="age", allow_blank=False, id="preset")
                yield Label("Steps")
                yield Input("30", id="steps", type="integer")
            yield Input(PRESETS["age"][0], id="prompt", placeholder="prompt template with {placeholders}")
            yield Input(PRESETS["age"][1], id="sweeps", placeholder="age=5,10; lora_scale=0,1")
            with Horizontal(classes="buttons"):
                yield Button("Generate", variant="primary", id="generate")
                yield ProgressBar(total=100, id="progress")
            yield Input("", id="grid-path", placeholder="the grid's path appears here", disabled=False)
            yield Static("", id="status", classes="status")
        yield Picture("the grid appears here when it is done", id="grid")
        yield from self.compose_footer()

    def action_refresh(self) -> None:
        self.call_engine(self.link.runs, self._show_runs)
        self.call_engine(self.link.system, lambda system: setattr(self, "engine_home", system.get("home")))

    def _show_runs(self, runs: list[dict]) -> None:
        select = self.query_one("#run", Select)
        current = select.value
        finished = [r for r in runs if r.get("status") == "done"]
        select.set_options([(r["name"], r["name"]) for r in finished])
        if current in {r["name"] for r in finished}:
            select.value = current
        elif finished:
            select.value = finished[-1]["name"]

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        prompt, sweeps = PRESETS[str(event.value)]
        self.query_one("#prompt", Input).value = prompt
        self.query_one("#sweeps", Input).value = sweeps

    @on(Button.Pressed, "#generate")
    def action_generate(self) -> None:
        run = self.query_one("#run", Select).value
        if run is Select.BLANK or run is None:
            self.notify("choose a finished run", severity="warning")
            return
        step = self.query_one("#step", Input).value.strip()
        config = {"prompt": self.query_one("#prompt", Input).value,
                  "steps": int(self.query_one("#steps", Input).value or 30),
                  "step": int(step) if step else None}
        sweeps = parse_sweeps(self.query_one("#sweeps", Input).value)
        self.query_one("#status", Static).update("generating…")
        self.call_engine(lambda: self.link.generate(str(run), config, sweeps), self.stream_job)

    @on(JobEvent)
    def job_event(self, event: JobEvent) -> None:
        if event.kind == "progress":
            self.query_one("#progress", ProgressBar).update(total=event.data["total"], progress=event.data["step"])
        elif event.kind == "done":
            grids = (event.data.get("result") or {}).get("grids") or []
            if grids:
                home = getattr(self, "engine_home", None)
                path = grids[0]["path"]
                self.query_one("#grid-path", Input).value = f"{home}/{path}" if home else path
                self.call_engine(lambda: self.link.file_bytes(grids[0]["url"]),
                                 lambda data: self.query_one("#grid", Picture).show(data))
            self.query_one("#status", Static).update(f"done: {len(grids)} grid(s); c copies the path")
        elif event.kind in ("failed", "cancelled", "interrupted"):
            self.query_one("#status", Static).update(f"{event.kind}: {event.data.get('reason', '')}")

    def action_copy_path(self) -> None:
        path = self.query_one("#grid-path", Input).value
        if path:
            self.app.copy_to_clipboard(path)
            self.notify(f"copied {path}")
