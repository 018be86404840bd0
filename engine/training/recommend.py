"""Which step to use, and when a run has started to overfit: one rule over metrics.jsonl's rows.

The rule (README, "Which step to use"), with every threshold in `Thresholds`:

1. Only sample steps count (rows with the grid's measures); the untrained step 0 never does.
2. A step is *good* when its likeness is within `good_likeness` (the same person) and its
   memorisation is under `memorisation_limit` (it does not copy the training photos).
3. Of the good steps, the earliest whose likeness is within `likeness_margin` of the best good
   likeness: as alike as the best, with the least training, so the least overfit.
4. No good step: where steps look like the person but all copy, the one that copies least; where
   no step looks like the person yet, the most alike that does not copy (else the most alike).
5. No faces in any grid (or no identity to compare with): no step; `generate` keeps the final LoRA.

The overfitting warning, at each sample step: memorisation at or over `memorisation_limit`, or
likeness worse by more than `worsening` at two sample steps in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Every number the recommendation and the overfitting warning use."""

    good_likeness: float = 0.6
    """Face distance under which a face is the same person (face_recognition's tolerance)."""
    memorisation_limit: float = 0.6
    """Memorisation at which the samples copy the training photos rather than draw the person anew
    (about a face within 0.26 of a training face, or a picture within 12 hash bits of a photo)."""
    likeness_margin: float = 0.02
    """Likeness differences smaller than this are noise between grids: the earlier step wins."""
    worsening: float = 0.01
    """How much likeness must grow (worsen) between sample steps to count as getting worse."""


THRESHOLDS = Thresholds()

# What to do about overfitting, in the user's words; the warning ends with it.
ADVICE = "stop here and use the recommended step, or lower the steps or the learning rate, or add photos"


@dataclass(frozen=True)
class Recommendation:
    """The step to generate from (None: the final LoRA), and why, in one sentence."""

    step: int | None
    reason: str
    likeness: float | None = None
    memorisation: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "reason": self.reason, "likeness": self.likeness,
                "memorisation": self.memorisation}


def sample_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of sample steps after step 0, in step order."""
    return sorted((r for r in rows if "memorisation" in r and r.get("step", 0) > 0), key=lambda r: r["step"])


def _is_copying(row: dict[str, Any], t: Thresholds) -> bool:
    return row.get("memorisation") is not None and row["memorisation"] >= t.memorisation_limit


def _pick(row: dict[str, Any], reason: str) -> Recommendation:
    return Recommendation(row["step"], reason, row.get("likeness"), row.get("memorisation"))


def recommend(rows: list[dict[str, Any]], t: Thresholds = THRESHOLDS) -> Recommendation:
    """The recommended step of a run from its metrics rows (see the module's rule)."""
    samples = sample_rows(rows)
    if not samples:
        return Recommendation(None, "no sample grids after step 0 to judge by (--sample-every 0); "
                                    "generate uses the final LoRA")
    if all(r.get("faces_found") is None for r in samples):
        return Recommendation(None, "no faces to compare with: the dataset was not prepared (likeness prep), "
                                    "so generate uses the final LoRA")
    scored = [r for r in samples if r.get("likeness") is not None]
    if not scored:
        return Recommendation(None, "no faces found in any sample grid, so likeness cannot be judged; "
                                    "generate uses the final LoRA")
    good = [r for r in scored if r["likeness"] <= t.good_likeness and not _is_copying(r, t)]
    if good:
        best = min(r["likeness"] for r in good)
        row = next(r for r in good if r["likeness"] <= best + t.likeness_margin)
        mem = row.get("memorisation")
        return _pick(row, f"step {row['step']} looks most like the person (face distance {row['likeness']:.2f}, "
                          f"best {best:.2f}) without copying the training photos "
                          f"(memorisation {_fmt(mem)} under {t.memorisation_limit:.2f})")
    alike = [r for r in scored if r["likeness"] <= t.good_likeness]
    if alike:
        row = min(alike, key=lambda r: (r["memorisation"], r["step"]))
        return _pick(row, f"every step that looks like the person also copies the training photos; step {row['step']} "
                          f"copies least (memorisation {_fmt(row['memorisation'])}, face distance "
                          f"{row['likeness']:.2f}): lower the steps or the learning rate, or add photos")
    fresh = [r for r in scored if not _is_copying(r, t)] or scored
    row = min(fresh, key=lambda r: (r["likeness"], r["step"]))
    return _pick(row, f"no step looks like the person yet (face distance under {t.good_likeness:.2f}); step "
                      f"{row['step']} comes closest ({row['likeness']:.2f}): train longer or at a higher learning rate")


@dataclass(frozen=True)
class OverfittingSign:
    """Why the newest sample step looks overfit, in one line that says what to do."""

    step: int
    cause: str  # "memorisation" or "likeness"
    message: str


def overfitting(rows: list[dict[str, Any]], t: Thresholds = THRESHOLDS) -> OverfittingSign | None:
    """The overfitting sign at the newest sample step, if there is one."""
    samples = sample_rows(rows)
    if not samples:
        return None
    last = samples[-1]
    advice = ADVICE
    recommended = recommend(rows, t).step
    if recommended is not None and recommended != last["step"]:
        advice = advice.replace("the recommended step", f"step {recommended} (recommended)")
    if _is_copying(last, t):
        return OverfittingSign(last["step"], "memorisation",
                               f"overfitting at step {last['step']}: the samples copy the training photos "
                               f"(memorisation {last['memorisation']:.2f} >= {t.memorisation_limit:.2f}); {advice}")
    trend = [r["likeness"] for r in samples[-3:] if r.get("likeness") is not None]
    if len(trend) == 3 and trend[1] - trend[0] > t.worsening and trend[2] - trend[1] > t.worsening:
        path = " -> ".join(f"{v:.2f}" for v in trend)
        return OverfittingSign(last["step"], "likeness",
                               f"overfitting at step {last['step']}: likeness worsened two sample steps in a row "
                               f"(face distance {path}); {advice}")
    return None


def best_likeness(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sample step with the best (lowest) likeness, and the memorisation there."""
    scored = [r for r in sample_rows(rows) if r.get("likeness") is not None]
    if not scored:
        return None
    row = min(scored, key=lambda r: (r["likeness"], r["step"]))
    return {"step": row["step"], "likeness": row["likeness"], "memorisation": row.get("memorisation")}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
