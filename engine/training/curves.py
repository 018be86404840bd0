"""RUN_DIR/curves.png: loss, likeness and memorisation against step, the answer marked on it.

Three panels over one step axis; every sample step is a dotted line with its numbers written
above its points, and the recommended step a green line, named with its reason in the title. matplotlib draws it, with
its headless Agg backend, imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.training.recommend import THRESHOLDS, Recommendation, sample_rows

CURVES_FILE = "curves.png"


def draw_curves(rows: list[dict[str, Any]], recommendation: Recommendation, path: Path, run: str) -> Path:
    """Draw the curves of ``run`` (its name, base and size, as the title says them) from its metrics
    rows into ``path`` (written atomically)."""
    import os

    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit: safe in a worker or a container
    from matplotlib.figure import Figure

    samples = sample_rows(rows)
    figure = Figure(figsize=(10, 8), dpi=100)
    loss_ax, like_ax, mem_ax = figure.subplots(3, 1, sharex=True)
    # Fixed margins (room for a three-line title): a layout engine would draw the figure twice.
    figure.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.07, hspace=0.1)

    losses = sorted((r["step"], r["loss"]) for r in rows if r.get("loss") is not None)
    if losses:
        steps, values = zip(*losses, strict=True)
        loss_ax.plot(steps, values, color="0.6", linewidth=0.8, label="loss per step")
        if len(values) >= 10:  # a moving median shows the trend through the noise of single steps
            import numpy as np

            window = max(5, len(values) // 20)
            smooth = [float(np.median(values[max(0, i - window + 1):i + 1])) for i in range(len(values))]
            loss_ax.plot(steps, smooth, color="black", linewidth=1.5, label=f"median of {window}")
        loss_ax.legend(loc="upper right", fontsize=8)
    loss_ax.set_ylabel("loss")

    _sample_panel(like_ax, samples, "likeness", "face distance\n(lower = more alike)", "tab:blue",
                  THRESHOLDS.good_likeness, "same person below", "no faces found in the sample grids")
    _sample_panel(mem_ax, samples, "memorisation", "memorisation\n(1 = copies a photo)", "tab:red",
                  THRESHOLDS.memorisation_limit, "copies above", "no training photos to compare with")
    mem_ax.set_xlabel("step")

    for ax in (loss_ax, like_ax, mem_ax):
        for row in samples:
            ax.axvline(row["step"], color="0.8", linestyle=":", linewidth=0.8)
        if recommendation.step is not None:
            ax.axvline(recommendation.step, color="tab:green", linewidth=2)
    if recommendation.step is not None:
        loss_ax.annotate(f" recommended: step {recommendation.step}", (recommendation.step, 1),
                         xycoords=("data", "axes fraction"), va="top", fontsize=8, color="tab:green")
    title = (f"recommended: step {recommendation.step}" if recommendation.step is not None
             else "no recommended step")
    # Named, because a curves.png copied out of its folder or set beside another's names nothing else.
    figure.suptitle(f"{run} · {title}\n{_wrap(recommendation.reason)}", fontsize=10)

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, format="png", metadata={"Title": f"{run} · {title}"})
    os.replace(partial, path)
    return path


def _sample_panel(ax, samples: list[dict[str, Any]], key: str, label: str, colour: str, limit: float,
                  limit_label: str, empty: str) -> None:
    points = [(r["step"], r[key]) for r in samples if r.get(key) is not None]
    ax.set_ylabel(label)
    ax.axhline(limit, color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
    ax.annotate(f"{limit_label} {limit:.2f}", (0.995, limit), xycoords=("axes fraction", "data"), fontsize=7,
                color=colour, va="bottom", ha="right")
    ax.margins(y=0.2)  # room for the numbers written above the points
    if not points:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
        return
    steps, values = zip(*points, strict=True)
    ax.plot(steps, values, marker="o", color=colour)
    for step, value in points:  # the numbers themselves, so nobody has to read them off the axis
        ax.annotate(f"{value:.2f}", (step, value), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8)


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
