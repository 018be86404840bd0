"""How far engine/placement/decision.py's VRAM estimate is from the calibration points. Prints a table, saves JSON.

    python -m bench.placement_bench

Points come from bench/calibration/sdxl_lora_vram.json (published figures, reference: not measured
by likeness), from bench/calibration/sdxl_phases_measured.json (phases of likeness's own runs, measured
on an H200), and from any bench/results/sdxl-unet-*.json that `python -m bench.train_bench --sdxl-unet`
wrote on a GPU (measured: torch's peak allocation of the UNet step, compared with the loop phase, which
leaves the CUDA context out). A bound is met or missed; a measured peak has an error in %.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from bench.results_file import RESULTS, save_report

CALIBRATION = Path(__file__).parent / "calibration" / "sdxl_lora_vram.json"
MEASURED = Path(__file__).parent / "calibration" / "sdxl_phases_measured.json"

# train_bench --sdxl-unet's variants as TrainConfig fields (rank 16, batch 1, no samples, latents given).
_SDXL_UNET_VARIANTS = {
    "default (8-bit Adam, checkpointing, xformers/SDPA, bf16)": {},
    "torch AdamW": {"optimizer": "adamw"},
    "no gradient checkpointing": {"gradient_checkpointing": False},
    "SDPA instead of xformers": {"attention": "sdpa"},
}


def _config(fields: dict, resolution: int | None = None):
    from engine.training.config import TrainConfig

    values = {"data": Path("."), "out": Path("."), **fields}
    if resolution is not None:
        values["resolution"] = resolution
    return TrainConfig(**values)


def reference_rows() -> list[dict]:
    from engine.placement.decision import estimate_peak_vram

    rows = []
    for point in json.loads(CALIBRATION.read_text())["points"]:
        estimate = estimate_peak_vram(_config(point["config"])).total_gib
        if point["kind"] == "at_most":
            ok = estimate <= point["gib"]
        else:
            ok = estimate >= point["gib"]
        rows.append({"name": point["name"], "kind": point["kind"], "reference_gib": point["gib"],
                     "estimate_gib": round(estimate, 2), "ok": ok, "error_pct": None, "source": point["source"]})
    return rows


def calibration_rows() -> list[dict]:
    """The measured phases of likeness's own runs against the estimate of the same phase and plan."""
    from engine.training.memory_plan import MemoryPlan, estimate_phases

    rows = []
    for point in json.loads(MEASURED.read_text())["points"]:
        config = _config({"sample_every": 0, **point["config"]})
        plan = MemoryPlan(config.gradient_checkpointing == "on", config.optimizer, **point["plan"])
        estimate = estimate_phases(config, plan).phases[point["phase"]]
        rows.append({"name": point["name"], "kind": "measured", "reference_gib": point["gib"],
                     "estimate_gib": estimate, "ok": None,
                     "error_pct": round(100 * (estimate - point["gib"]) / point["gib"], 1), "source": str(MEASURED)})
    return rows


def measured_rows() -> list[dict]:
    from engine.placement.decision import estimate_peak_vram

    rows = []
    for path in sorted(RESULTS.glob("sdxl-unet-*.json")):
        report = json.loads(path.read_text())
        for result in report["results"]:
            fields = {"rank": report.get("lora_rank", 16), "batch_size": report.get("batch_size", 1),
                      "cache_latents": True, "sample_every": 0, **_SDXL_UNET_VARIANTS.get(result["variant"], {})}
            estimate = estimate_peak_vram(_config(fields, report["resolution"]))
            # torch's max_allocated of the bare step: the loop phase, which leaves out the CUDA context.
            training = estimate.phases["loop"]
            measured = result["peak_memory_mb"] / 1024
            rows.append({"name": f"{path.name}: {result['variant']} on {result['gpu']}", "kind": "measured",
                         "reference_gib": round(measured, 2), "estimate_gib": round(training, 2),
                         "ok": None, "error_pct": round(100 * (training - measured) / measured, 1),
                         "source": str(path)})
    return rows


def main() -> None:
    rows = reference_rows() + calibration_rows() + measured_rows()
    for row in rows:
        verdict = (f"{row['error_pct']:+6.1f} %" if row["error_pct"] is not None
                   else ("bound met" if row["ok"] else "BOUND MISSED"))
        print(f"{row['name'][:62]:62s} {row['kind']:9s} ref {row['reference_gib']:6.2f} GiB  "
              f"est {row['estimate_gib']:6.2f} GiB  {verdict}")
    bounds = [r for r in rows if r["ok"] is not None]
    errors = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None]
    summary = {"bounds_met": sum(r["ok"] for r in bounds), "bounds": len(bounds),
               "measured_points": len(errors),
               "mean_abs_error_pct": round(sum(errors) / len(errors), 1) if errors else None}
    print(f"bounds met: {summary['bounds_met']}/{summary['bounds']}; measured points: {summary['measured_points']}"
          + (f", mean |error| {summary['mean_abs_error_pct']} %" if errors else
             " (none yet: run `python -m bench.train_bench --sdxl-unet` on a GPU)"))
    report = {"benchmark": "placement-estimate", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "summary": summary, "rows": rows}
    path = save_report("placement", report)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
