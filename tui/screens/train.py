"""Train: pick a dataset, a base model and a preset (or custom settings); see where it will run; start."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Select, Static
from textual.worker import get_current_worker

from engine.errors import LikenessError
from tui.field_words import in_form_words, plain
from tui.screens.base import EngineScreen, one_line

# The seed's two rounds: about 40 good photos trained well in 500 steps at rank 16; a 1,500-photo
# library needed 1,500 steps at rank 32 (and did no better, which is why prep exists). The resolution
# is not a preset's: it follows the dataset, whose images prep made at one size.
PRESETS = {
    "quick": {"steps": 500, "rank": 16, "lr": 1e-4, "sample_every": 100},
    "large": {"steps": 1500, "rank": 32, "lr": 1e-4, "sample_every": 250},
}
PRESET_FIELDS = ("steps", "rank", "lr", "sample_every")
FIELDS = (*PRESET_FIELDS, "resolution")
LABELS = {"steps": "Steps", "rank": "LoRA rank", "lr": "Learning rate", "resolution": "Resolution",
          "sample_every": "Sample every", "base": "Base model", "token": "Token", "class_word": "Class word"}


class FieldError(ValueError):
    """A form field that does not hold what the engine needs, named as the form names it."""


def run_name(dataset: str | None, preset: str) -> str:
    """The name a run gets when the Run name field is left empty (and its placeholder)."""
    return f"{dataset or 'me'}-{preset}"


def matching_preset(values: dict[str, str]) -> str:
    """The preset whose numbers the fields hold, else custom."""
    for name, preset in PRESETS.items():
        try:
            if all(float(values[field]) == float(preset[field]) for field in PRESET_FIELDS):
                return name
        except ValueError:
            break
    return "custom"


def field_error(error: Exception) -> str:
    """A pydantic ValidationError as one line naming the form field."""
    errors = getattr(error, "errors", None)
    if errors is None:
        return str(error)
    first = errors()[0]
    field = str(first["loc"][0]) if first.get("loc") else ""
    message = plain(first.get("msg", ""))
    return f"{LABELS.get(field, field)}: {message}" if field else message


class TrainScreen(EngineScreen):
    BINDINGS = [("s", "start", "Start"), ("x", "exact", "Exact memory"), ("r", "refresh", "Refresh")]

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
                yield Input(placeholder=run_name(None, "quick"), id="name")
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
            yield Static("x: simulate this run at full size on the card it goes to (a minute or more of CPU; no "
                         "GPU, no weights), for each phase's exact peak", id="exact", classes="status")
            with Horizontal(classes="buttons"):
                yield Button("Start training", variant="primary", id="start")
                yield Button("Exact memory", id="exact-button")
        yield from self.compose_footer()

    def action_refresh(self) -> None:
        self.call_engine(self.link.datasets, self._show_datasets)
        self.call_engine(self.link.system, self._show_system)
        self.check_base(self.query_one("#base", Input).value.strip())

    @work(thread=True, exclusive=True, exit_on_error=False, group="base-check")
    def check_base(self, spec: str) -> None:
        """Ask, as `likeness train` does, whether the base can be had; the plan line then says so."""
        import time

        time.sleep(0.3)  # typing a repo id: ask once it pauses, not at every letter (exclusive cancels this)
        if get_current_worker().is_cancelled:
            return
        problem = self.link.base_problem(spec)
        self.app.call_from_thread(self._base_checked, spec, problem)

    def _base_checked(self, spec: str, problem: str | None) -> None:
        self.base_problems = {**getattr(self, "base_problems", {}), spec: problem}
        self._update_placement()

    def _show_datasets(self, datasets: list[dict]) -> None:
        select = self.query_one("#dataset", Select)
        current = select.value
        self.dataset_sizes = {d["name"]: d.get("size") for d in datasets}
        select.set_options([(f"{d['name']} (damaged: {d['damaged']})" if d.get("damaged") else
                             f"{d['name']} ({d.get('accepted', '?')} photos, {d.get('size', '?')} px)", d["name"])
                            for d in datasets])
        if current in {d["name"] for d in datasets}:
            select.value = current
        elif len(datasets) == 1:
            select.value = datasets[0]["name"]  # the only one there is: nothing to choose

    def _show_system(self, system: dict) -> None:
        self.system = system
        self._update_placement()

    def _dataset(self) -> str | None:
        select = self.query_one("#dataset", Select)
        return None if select.is_blank() else str(select.value)

    def _preset(self) -> str:
        return str(self.query_one("#preset", Select).value)

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        preset = PRESETS.get(str(event.value))
        if preset is not None:
            for field in PRESET_FIELDS:
                self.query_one(f"#{field}", Input).value = str(preset[field])
        self._update_name()
        self._update_placement()

    @on(Select.Changed, "#dataset")
    def dataset_changed(self) -> None:
        # Train at the size prep made the images: larger only enlarges them (softer), smaller wastes them.
        # Only when another dataset is picked: a refresh re-selects the same one, and a size the user
        # typed for it stays.
        dataset = self._dataset()
        size = getattr(self, "dataset_sizes", {}).get(dataset)
        if size and dataset != getattr(self, "sized_for", None):
            self.query_one("#resolution", Input).value = str(size)
            self.sized_for = dataset
        self._update_name()

    @on(Input.Changed)
    @on(Select.Changed, "#class_word")
    @on(Checkbox.Changed)
    def _inputs_changed(self, event) -> None:
        field = getattr(getattr(event, "input", None), "id", None)
        if field in PRESET_FIELDS:
            # The preset's label must not claim numbers the fields no longer hold.
            values = {f: self.query_one(f"#{f}", Input).value for f in FIELDS}
            preset = self.query_one("#preset", Select)
            if self._preset() != matching_preset(values):
                with self.prevent(Select.Changed):
                    preset.value = matching_preset(values)
                self._update_name()
        if field == "base":
            self.check_base(event.value.strip())
        if field != "name":
            self._update_placement()

    def _update_name(self) -> None:
        self.query_one("#name", Input).placeholder = run_name(self._dataset(), self._preset())

    def config(self) -> dict:
        """The form as the engine's train config; FieldError names the field that is not a number."""
        values = {}
        for field in FIELDS:
            text = self.query_one(f"#{field}", Input).value.strip()
            kind = float if field == "lr" else int
            try:
                values[field] = kind(text)
            except ValueError:
                raise FieldError(f"{LABELS[field]} must be a {'number' if kind is float else 'whole number'}"
                                 f"{f', not {text!r}' if text else ''}") from None
        return {
            "base": self.query_one("#base", Input).value.strip(),
            "token": self.query_one("#token", Input).value.strip(),
            "class_word": self.query_one("#class_word", Select).value,
            **values,
            # A checkpoint with every sample grid: Cancel, then Resume, loses at most that much.
            "checkpoint_every": values["sample_every"],
            "prior_preservation": self.query_one("#prior_preservation", Checkbox).value,
        }

    def _plan(self) -> tuple[dict, str]:
        """The config to send and the placement line; raises FieldError naming the field at fault."""
        from pydantic import ValidationError

        from engine.errors import LikenessError

        config = self.config()
        problem = getattr(self, "base_problems", {}).get(config["base"])
        if problem:  # the CLI's own words for this base, and a base that works here
            raise FieldError(f"{problem}; to try the interface, set Base model to tiny, the built-in test model")
        try:
            return self.link.plan(config, getattr(self, "system", {}))
        except ValidationError as error:
            raise FieldError(field_error(error)) from None
        except LikenessError as error:
            raise FieldError(str(error)) from None

    def _update_placement(self) -> None:
        if getattr(self, "system", None) is None:
            return
        try:
            _, line = self._plan()
        except FieldError as error:
            line = f"[b]cannot start yet:[/b] {error}"
        self.query_one("#placement", Static).update(line)

    @on(Button.Pressed, "#exact-button")
    def action_exact(self) -> None:
        """Simulate the planned run at full size (``likeness train --dry-run --exact``'s simulation)."""
        if getattr(self, "system", None) is None:
            self.notify("waiting for the engine's system report; try again in a moment", severity="warning")
            return
        # Not the plan line's checks: a run Modal cannot start yet (no token) can still be simulated.
        self.query_one("#exact", Static).update("simulating at full size: starting…")
        self._simulate(self.config(), dict(self.system))

    @work(thread=True, exclusive=True, exit_on_error=False, group="exact-memory")
    def _simulate(self, config: dict, system: dict) -> None:
        import time

        worker = get_current_worker()
        started = time.monotonic()
        label = self.query_one("#exact", Static)

        def progress(phase: str) -> None:
            self.app.call_from_thread(label.update, f"simulating at full size: {phase}, "
                                                    f"{time.monotonic() - started:.0f} s")

        try:
            text = self.link.simulate(config, system, progress, should_stop=lambda: worker.is_cancelled)
        except Exception as error:  # a field the engine refuses, a base that is not SDXL, a CPU run
            if not worker.is_cancelled:
                said = field_error(error) if hasattr(error, "errors") else one_line(error)
                self.app.call_from_thread(label.update, f"[b]exact memory:[/b] {said}")
            return
        self.app.call_from_thread(label.update, text)

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        dataset = self._dataset()
        if dataset is None:
            self.notify("choose a dataset (prepare one on the Photos screen, key 1)", severity="warning")
            return
        try:
            config, _ = self._plan()
        except FieldError as error:
            self.notify(str(error), severity="error")
            return
        name = self.query_one("#name", Input).value.strip() or run_name(dataset, self._preset())

        def start() -> int:
            # A base the check has not answered for yet (typed a moment ago) is refused here as the CLI would.
            problem = self.link.base_problem(config["base"])
            if problem:
                raise LikenessError(problem)
            return self.link.train(dataset, name, config)

        self.call_engine(start, self.app.watch_job, lambda text: self.notify(
            f"not started: {in_form_words(text, {**LABELS, 'out': 'Run name'})}", severity="error", timeout=8))
