"""Generate: a run and checkpoint, a prompt template and sweeps; the grid appears when done."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from engine.errors import LikenessError
from engine.service.client import ended_words
from tui.field_words import in_form_words
from tui.messages import JobEvent
from tui.screens.base import EngineScreen
from tui.widgets.picture import Picture

PRESETS = {
    "age": ("a photo of {token} {class_word} at age {age}", "age=5,10,18,25,50,80"),
    "strength": ("a photo of {token} {class_word}", "lora_scale=0,0.25,0.5,0.75,1"),
    "temperature": ("a photo of {token} {class_word}", "temperature=0,0.25,0.5,0.75,1"),
    # The seed's grid: how strongly the LoRA is applied against how varied the sampling is.
    "strength-temperature": ("a photo of {token} {class_word}", "lora_scale=0,0.5,1 temperature=0,0.5,1"),
}


def parse_sweeps(text: str) -> list[str]:
    """'age=5,10 lora_scale=0,1' (or with ';' or new lines between) -> ['age=5,10', 'lora_scale=0,1']."""
    from engine.generation.sweeps import split_sweeps

    return split_sweeps(text)


# The engine's names for the form's fields, for its refusals.
LABELS = {"steps": "Denoising steps", "step": "Checkpoint step", "prompt": "Prompt template", "lora": "Run",
          "sweeps": "Sweeps"}


class GenerateScreen(EngineScreen):
    BINDINGS = [("g", "generate", "Generate"), Binding("f", "full_screen", "Full screen"),
                ("c", "copy_path", "Copy grid path"), ("r", "refresh", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.job_id: int | None = None
        self.state: str | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal():
            with Vertical(classes="panel side"):
                yield Label("Generate", classes="panel--title")
                with Vertical(classes="stack"):
                    yield Label("Run")
                    yield Select([], prompt="train one first (2)", id="run")
                    yield Label("Checkpoint step (empty: recommended, else final)")
                    # Empty is the default (the recommended step), not a mistake: it must not turn red.
                    yield Input(placeholder="final", id="step", type="integer", valid_empty=True)
                    yield Label("Preset")
                    yield Select([("age 5 → 80", "age"), ("strength 0 → 1", "strength"),
                                  ("temperature 0 → 1", "temperature"),
                                  ("strength × temperature", "strength-temperature")], value="age", allow_blank=False,
                                 id="preset")
                    yield Label("Denoising steps")
                    yield Input("30", id="steps", type="integer")
                    yield Label("Prompt template")
                    yield Input(PRESETS["age"][0], id="prompt", placeholder="prompt template with {placeholders}")
                    yield Label("Sweeps (NAME=a,b,c; several: a space between)")
                    yield Input(PRESETS["age"][1], id="sweeps", placeholder="age=5,10; lora_scale=0,1")
                with Horizontal(classes="buttons"):
                    yield Button("Generate", variant="primary", id="generate")
                yield ProgressBar(total=100, id="progress")
                yield Static("", id="status", classes="status")
                yield Input("", id="grid-path", placeholder="the grid's path appears here", disabled=False)
            yield Picture("the grid appears here when it is done (f: full screen)", id="grid")
        yield from self.compose_footer()

    def action_refresh(self) -> None:
        self.call_engine(self.link.runs, self._show_runs)
        self.call_engine(self.link.system, lambda system: setattr(self, "engine_home", system.get("home")))

    def _show_runs(self, runs: list[dict]) -> None:
        select = self.query_one("#run", Select)
        current = select.value
        finished = [r for r in runs if r.get("status") == "done"]
        self.recommended_steps = {r["name"]: r.get("recommended_step") for r in finished}
        select.set_options([(r["name"], r["name"]) for r in finished])
        if current in {r["name"] for r in finished}:
            select.value = current
        elif finished:
            select.value = finished[-1]["name"]

    @on(Select.Changed, "#run")
    def run_changed(self) -> None:
        # The placeholder says what an empty field draws with: the engine takes the recommended step.
        select = self.query_one("#run", Select)
        step = None if select.is_blank() else getattr(self, "recommended_steps", {}).get(str(select.value))
        self.query_one("#step", Input).placeholder = "final" if step is None else f"{step} (recommended)"

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        prompt, sweeps = PRESETS[str(event.value)]
        self.query_one("#prompt", Input).value = prompt
        self.query_one("#sweeps", Input).value = sweeps

    def _status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    @on(Button.Pressed, "#generate")
    def action_generate(self) -> None:
        select = self.query_one("#run", Select)
        if select.is_blank():
            self.notify("choose a finished run (train one on the Train screen, 2)", severity="warning")
            return
        run = str(select.value)
        step = self.query_one("#step", Input).value.strip()
        steps = self.query_one("#steps", Input).value.strip()
        if not steps.isdigit() or (step and not step.isdigit()):
            self.notify("Denoising steps and Checkpoint step must be whole numbers", severity="error")
            return
        config = {"prompt": self.query_one("#prompt", Input).value, "steps": int(steps),
                  "step": int(step) if step else None}
        try:
            sweeps = parse_sweeps(self.query_one("#sweeps", Input).value)
        except LikenessError as error:
            self.notify(str(error), severity="error")
            return
        self.job_id, self.state, self.lora_text = None, None, None
        self.query_one("#progress", ProgressBar).update(total=100, progress=0)
        self._status(f"sending the request for {run}…")
        self.call_engine(lambda: self.link.generate(run, config, sweeps), self._submitted,
                         lambda error: self._status(f"not started: {in_form_words(error, LABELS)}"))

    def _submitted(self, job_id: int) -> None:
        self.job_id = job_id
        self._status(f"job {job_id} submitted")
        self.stream_job(job_id)

    @on(JobEvent)
    def job_event(self, event: JobEvent) -> None:
        if event.job_id != self.job_id:
            return
        if event.kind == "queued":
            self.state = "queued"
            self._status(f"job {event.job_id} queued")
            job_id = event.job_id
            self.call_engine(lambda: self.link.waiting_for(job_id), self._show_waiting)
        elif event.kind == "running":
            self.state = "running"
            self._status(f"job {event.job_id} running: loading the models…")
        elif event.kind == "progress":
            self.query_one("#progress", ProgressBar).update(total=event.data["total"], progress=event.data["step"])
            self._status(f"job {event.job_id} running: image {event.data['step']}/{event.data['total']}")
        elif event.kind == "log" and event.data.get("message", "").startswith("drawing with"):
            # Which LoRA file and step the grid is drawn with: shown from here to the end.
            self.lora_text = event.data["message"]
            self._status(f"job {event.job_id}: {self.lora_text}")
        elif event.kind == "done":
            self.state = "done"
            grids = (event.data.get("result") or {}).get("grids") or []
            if grids:
                home = getattr(self, "engine_home", None)
                path = grids[0]["path"]
                self.query_one("#grid-path", Input).value = f"{home}/{path}" if home else path
                self.call_engine(lambda: self.link.file_bytes(grids[0]["url"]),
                                 lambda data: self.query_one("#grid", Picture).show(data))
            self._status(f"job {event.job_id} done: {len(grids)} grid(s); f shows it full-screen, c copies its path"
                         + (f"\n{self.lora_text}" if getattr(self, "lora_text", None) else ""))
        elif event.kind in ("failed", "cancelled", "interrupted"):
            self.state = event.kind
            self._status(f"job {event.job_id} {ended_words(event.kind, event.data.get('reason'))}")

    def _show_waiting(self, ahead: int | None) -> None:
        if self.state == "queued":
            self._status(f"job {self.job_id} queued behind job {ahead} (one GPU job at a time)" if ahead
                         else f"job {self.job_id} queued: starting…")

    def action_full_screen(self) -> None:
        self.query_one("#grid", Picture).action_full_screen()

    def action_copy_path(self) -> None:
        path = self.query_one("#grid-path", Input).value
        if path:
            self.app.copy_to_clipboard(path)
            self.notify(f"copied {path}")
