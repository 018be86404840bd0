"""The likeness curves in the terminal: loss, likeness and memorisation against step, as they arrive.

The same three curves as RUN_DIR/curves.png, drawn by plotext through textual-plotext: loss on
the left axis; likeness (face distance, lower is more alike) and memorisation (1 = copies a
training photo) on the right, both on 0..1 scales; the recommended step a green vertical line.
A parent feeds it the job's events (attributes down): `add_loss`, `add_sample`, `recommend`.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

LOSS_COLOUR, LIKENESS_COLOUR, MEMORISATION_COLOUR, RECOMMENDED_COLOUR = "white", "blue+", "red+", "green+"


def curves_legend() -> str:
    """The curves' key in words and their colours (Rich markup): plotext's own legend marks each
    curve's axis with 'L' or '⅃', which no one reads as left and right."""
    return (f"[{LOSS_COLOUR}]⣿ loss[/] (left axis) · [{LIKENESS_COLOUR.rstrip('+')}]• likeness[/] "
            f"(face distance, lower is more alike) · [{MEMORISATION_COLOUR.rstrip('+')}]• memorisation[/] "
            f"(1 copies a photo), right axis 0–1 · [{RECOMMENDED_COLOUR.rstrip('+')}]│ recommended step[/]")


class LikenessCurves(PlotextPlot):
    """Loss, likeness and memorisation of one training job, redrawn on every new point."""

    DEFAULT_CSS = """
    LikenessCurves { height: 10; min-height: 6; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.losses: dict[int, float] = {}
        self.samples: dict[int, tuple[float | None, float | None]] = {}  # step -> (likeness, memorisation)
        self.recommended: int | None = None

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def clear(self) -> None:
        """Forget every point: a new job is being followed."""
        self.losses, self.samples, self.recommended = {}, {}, None
        self.replot()

    def add_loss(self, step: int, loss: float) -> None:
        self.losses[step] = loss
        self.replot()

    def add_sample(self, step: int, likeness: float | None, memorisation: float | None) -> None:
        self.samples[step] = (likeness, memorisation)
        self.replot()

    def recommend(self, step: int | None) -> None:
        self.recommended = step
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.xlabel("step")
        plt.ylim(0, max([1.0, *(v for pair in self.samples.values() for v in pair if v is not None)]), yside="right")
        if self.losses:
            steps = sorted(self.losses)
            plt.plot(steps, [self.losses[s] for s in steps], color=LOSS_COLOUR, yside="left",
                     marker="braille")
        for index, colour in enumerate((LIKENESS_COLOUR, MEMORISATION_COLOUR)):
            points = sorted((s, pair[index]) for s, pair in self.samples.items() if pair[index] is not None)
            if points:
                plt.plot([s for s, _ in points], [v for _, v in points], color=colour, yside="right",
                         marker="dot")
        if self.recommended is not None:
            plt.vline(self.recommended, color=RECOMMENDED_COLOUR)
        if self.samples and not any(pair[0] is not None for pair in self.samples.values()):
            plt.title("no faces found in the sample grids yet")
        elif self.recommended is not None:
            plt.title(f"recommended: step {self.recommended}")
        self.refresh()
