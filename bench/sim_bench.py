"""The memory estimate against the full-size simulator, over a grid of configs and cards.

    python -m bench.sim_bench              # ~30 minutes on 2 cores; no GPU, no weights
    python -m bench.sim_bench --quick      # the three cards' default run only (~5 minutes)

For each card (8 GB with 7.6 GiB free, 12 GB, 24 GB) and each config (1024 px / rank 16 / batch 1, then
one thing changed at a time: resolution 512 and 768, rank 4 and 64, batch 2, the text encoders trained,
prior preservation), the plan ``auto`` chooses there, each phase's estimate
(engine.training.memory_plan) and each phase's simulated peak (engine.training.full_size_sim: our
trainer at SDXL base 1.0's shapes under fake tensors). Two more rows isolate a coefficient each: a
sample grid's UNet denoising with the decode tiled small, and the whole-image decode with one image a pass.

The rows also land in ``bench/calibration/sdxl_phases_simulated.json`` (with ``--save-calibration``),
which tests/test_memory_estimate.py holds the estimate to (never below a simulated phase, at most 20 %
above it): the points the estimate's never-measured coefficients were set from.

Writes bench/results/simulated-phases-<time>.json.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

from bench.results_file import save_report

CARDS_GIB = {"8 GB": 7.6, "12 GB": 11.5, "24 GB": 22.5}
DEFAULT = dict(resolution=1024, rank=16, batch_size=1, train_text_encoder=False, prior_preservation=False)
VARIANTS = {"default": {}, "512 px": {"resolution": 512}, "768 px": {"resolution": 768}, "rank 4": {"rank": 4},
            "rank 64": {"rank": 64}, "batch 2": {"batch_size": 2}, "text encoders trained": {"train_text_encoder": True},
            "prior preservation": {"prior_preservation": True}}
# Which variants each card runs: every one on the 8 GB card, where the target is; the rest where their
# plans differ most (no checkpointing on 24 GB, partial on 12 GB).
CARD_VARIANTS = {"8 GB": tuple(VARIANTS), "12 GB": ("default", "text encoders trained", "prior preservation"),
                 "24 GB": ("default", "512 px", "rank 64", "batch 2", "text encoders trained", "prior preservation")}
CALIBRATION = Path(__file__).parent / "calibration" / "sdxl_phases_simulated.json"


def _config(overrides: dict):
    from engine.training.config import TrainConfig

    return TrainConfig(data=Path("photos"), out=Path("run"), steps=500, sample_every=100, **{**DEFAULT, **overrides})


def grid(quick: bool) -> dict[str, tuple]:
    """name -> (config overrides, plan, card's free GiB)."""
    from engine.training.memory_plan import choose_plan

    runs = {}
    for card, free in CARDS_GIB.items():
        for variant in (("default",) if quick else CARD_VARIANTS[card]):
            overrides = VARIANTS[variant]
            runs[f"{card}, {variant}"] = (overrides, choose_plan(_config(overrides), free), free)
    if not quick:
        big = CARDS_GIB["24 GB"]
        plan = choose_plan(_config({}), big)
        # The denoise alone: six images a pass, the decode in 256-px tiles (a sixteenth of the image).
        runs["24 GB, sampling: UNet on 6 images, decode tiled"] = ({}, replace(plan, sample_batch=6, decode_tile_px=256), big)
        # The decode alone: one image a pass, decoded whole.
        runs["24 GB, sampling: UNet on 1 image, decode whole"] = ({}, replace(plan, sample_batch=1, decode_tile_px=None), big)
    return runs


def run_grid(runs: dict[str, tuple]) -> list[dict]:
    """Each run simulated in a child process (engine.training.simulation_process): one simulation's torch
    state never meets the next's."""
    import tempfile

    from bench.gpu_bench import save_configs
    from engine.training.memory_plan import estimate_phases
    from engine.training.simulation_process import simulate_in_child

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = str(save_configs(Path(folder) / "sdxl"))
        for name, (overrides, plan, free) in runs.items():
            config = _config(overrides).model_copy(update={"base": base})
            try:
                peaks = simulate_in_child(config, free, plan)
            except Exception as error:  # noqa: BLE001 - a config our trainer fails at full size is a finding
                print(f"{name}: FAILED: {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)
                rows.append({"name": name, "config": {**DEFAULT, **overrides}, "free_gib": free,
                             "plan": plan.to_json(), "error": f"{type(error).__name__}: {error}"[:500]})
                continue
            phases, seconds = peaks.phases, peaks.seconds
            estimated = estimate_phases(config, plan).phases
            rows.append({"name": name, "config": {**DEFAULT, **overrides}, "free_gib": free,
                         "plan": plan.to_json(), "savers": plan.savers(),
                         "simulated_phase_peak_gib": phases, "estimated_phase_peak_gib": estimated,
                         "estimate_over_simulation": {k: round(estimated[k] / v, 3) for k, v in phases.items() if v},
                         "seconds": round(seconds)})
            ratios = " ".join(f"{k} {v:.2f}/{estimated[k]:.2f}" for k, v in phases.items())
            print(f"{name}: simulated/estimated GiB {ratios} ({seconds:.0f} s)", flush=True)
    return rows


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the three cards' default run only")
    parser.add_argument("--only", metavar="TEXT", help="only the rows whose name holds TEXT (with --save-calibration "
                                                       "they replace the same rows there, the others are kept)")
    parser.add_argument("--save-calibration", action="store_true",
                        help=f"also write the rows to {CALIBRATION.relative_to(Path.cwd()) if CALIBRATION.is_relative_to(Path.cwd()) else CALIBRATION}")
    args = parser.parse_args()
    import diffusers
    import torch

    runs = grid(args.quick)
    if args.only:
        runs = {name: run for name, run in runs.items() if args.only in name}
    rows = run_grid(runs)
    ran = [r for r in rows if "error" not in r]
    worst = max(max(r["estimate_over_simulation"].values()) for r in ran)
    least = min(min(r["estimate_over_simulation"].values()) for r in ran)
    report = {"benchmark": "simulated-phases", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "how": "engine.training.full_size_sim (FakeTensorMode; cuDNN/cuBLAS workspaces, fragmentation and "
                     "the CUDA context not counted), torch " + torch.__version__ + ", diffusers " + diffusers.__version__,
              "estimate_over_simulation_range": [least, worst], "rows": rows}
    path = save_report("simulated-phases", report)
    print(f"estimate / simulation per phase: {least:.2f} to {worst:.2f}; saved {path}")
    if args.save_calibration and len(ran) < len(rows):
        raise SystemExit(f"{len(rows) - len(ran)} rows failed: the calibration file is left as it was")
    if args.save_calibration:
        saved = rows
        if args.only and CALIBRATION.exists():
            fresh = {row["name"] for row in rows}
            saved = [row for row in json.loads(CALIBRATION.read_text())["rows"] if row["name"] not in fresh] + rows
            order = list(grid(False))
            saved.sort(key=lambda row: order.index(row["name"]) if row["name"] in order else len(order))
        CALIBRATION.write_text(json.dumps({"how": report["how"], "when": report["when"], "rows": saved}, indent=1) + "\n")
        print(f"saved {CALIBRATION}")


if __name__ == "__main__":
    main()
