"""Train: pick a dataset, a base model and a preset (or custom settings); see where it will run; start."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from tui.screens.base import EngineScreen

# The seed's two rounds: about 40 good photos trained well in 500 steps at rank 16; a 1,500-photo
# library needed 1,500 steps at rank 32 (and did no better, which is why prep exists).
PRESETS = {
    "quick": {"steps": 500, "rank": 16, "lr": 1e-4, "resolution": 1024, "sample_every": 100},
    "large": {"steps": 1500, "rank": 32, "lr": 1e-4, "resolution": 1024, "sample_every": 250},
}
FIELDS = ("steps", "rank", "lr", "resolution", "sample_every")


class TrainScreen(EngineScreen):
    BINDINGS = [("s", "start", "Start"), ("r", "refresh", "Refresh")]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Vertical(classes="panel"):
            yield Label("Train a LoRA", classes="panel--title")
            with Horizontal(classes="form"):
                yield Label("Dataset")
                yield Select([], prompt="prepare one on the Photos screen", id="dataset")
                yield Label("Base model")
                yield Input("stabilityai/stable-diffusion-xl-base-1.0", id="base")
                yield Label("Preset")
                yield Select([("Quick: ~40 photos, 500 steps, rank 16", "quick"),
                              ("Large: ~1,500 photos, 1,500 steps, rank 32", "large"),
                              ("Custom", "custom")], value="quick", allow_blank=False, id="preset")
                yield Label("Run name")
                yield Input(placeholder="me-quick", id="name")
                yield Label("Token")
                yield Input("sks", id="token")
                yield Label("Class word")
                yield Select([("man", "man"), ("woman", "woman"), ("person", "person")], value="person",
                             allow_blank=False, id="class_word")
                yield Label("Steps")
                yield Input("500", id="steps", type="integer")
                yield Label("LoRA rank")
                yield Input("16", id="rank", type="integer")
                yield Label("Learning rate")
                yield Input("0.0001", id="lr", type="number")
                yield Label("Resolution")
                yield Input("1024", id="resolution", type="integer")
                yield Label("Sample every")
                yield Input("100", id="sample_every", type="integer")
                yield Label("")
                yield Checkbox("prior preservation", id="prior_preservation")
            yield Static("", id="placement", classes="status")
            with Horizontal(classes="buttons"):
                yield Button("Start training", variant="primary", id="start")
        yield from self.compose_footer()

    def action_refresh(self) -> None:
        self.call_engine(self.link.datasets, self._show_datasets)
        self.call_engine(self.link.system, self._show_system)

    def _show_datasets(self, datasets: list[dict]) -> None:
        select = self.query_one("#dataset", Select)
        current = select.value
        select.set_options([(f"{d['name']} ({d.get('accepted', '?')} photos)", d["name"]) for d in datasets])
        if current in {d["name"] for d in datasets}:
            select.value = current

    def _show_system(self, system: dict) -> None:
        self.system = system
        self._update_placement()

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        preset = PRESETS.get(str(event.value))
        if preset is None:
            return
        for field in FIELDS:
            self.query_one(f"#{field}", Input).value = str(preset[field])
        self._update_placement()

    @on(Input.Changed)
    def _inputs_changed(self, event: Input.Changed) -> None:
        if event.input.id in FIELDS:
            self._update_placement()

    def config(self) -> dict:
        values = {field: self.query_one(f"#{field}", Input).value for field in FIELDS}
        return {
            "base": self.query_one("#base", Input).value.strip(),
            "token": self.query_one("#token", Input).value.strip(),
            "class_word": self.query_one("#class_word", Select).value,
            "steps": int(values["steps"] or 0), "rank": int(values["rank"] or 0), "lr": float(values["lr"] or 0),
            "resolution": int(values["resolution"] or 0), "sample_every": int(values["sample_every"] or 0),
            # A checkpoint with every sample grid: Cancel, then Resume, loses at most that much.
            "checkpoint_every": int(values["sample_every"] or 0),
            "prior_preservation": self.query_one("#prior_preservation", Checkbox).value,
        }

    def _update_placement(self) -> None:
        system = getattr(self, "system", None)
        if system is None:
            return
        try:
            line = self.link.placement_line(self.config(), system)
        except (ValueError, KeyError):
            line = "fill in the numbers to see where this run goes"
        self.query_one("#placement", Static).update(line)

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        dataset = self.query_one("#dataset", Select).value
        if dataset is Select.BLANK or dataset is None:
            self.notify("choose a dataset (prepare one on the Photos screen, key 1)", severity="warning")
            return
        try:
            config = self.config()
        except ValueError:
            self.notify("steps, rank, resolution and sample every must be whole numbers", severity="error")
            return
        name = self.query_one("#name", Input).value.strip() or f"{dataset}-{self.query_one('#preset', Select).value}"
        self.call_engine(lambda: self.link.train(str(dataset), name, config), self.app.watch_job)
