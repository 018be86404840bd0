"""Gradient checkpointing by block: peak memory and recomputed FLOPs against the fraction checkpointed.

    python -m bench.checkpoint_bench        # a second; no GPU

At 1024 px, rank 16 (the UNet alone, then with the text encoders trained): for each fraction of full
checkpointing's recomputation (``--gradient-checkpointing FRACTION``), the blocks the plan checkpoints,
the training loop's estimated peak and the whole run's, and the FLOPs recomputed a step (torch's
FlopCounterMode counts, from engine/training/data/sdxl_checkpoint_blocks.json). Then the plan ``auto``
chooses on 8, 12, 16 and 24 GB cards. The memory is the estimate's (engine.training.memory_plan), whose
ends are the H200's measured steps with no and with full checkpointing; seconds a step are for the GPU
benchmark (bench/gpu_bench.py runs these fractions).

``--simulate`` also runs the full-size simulator (engine.training.full_size_sim, minutes per run on
2 cores) for no, partial (the 12 GB card's auto plan) and full checkpointing, and records each phase's
simulated peak beside the estimate: whether the blocks the table says free memory free it at full size.

Writes bench/results/checkpointing-<time>.json.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bench.results_file import save_report

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CARDS_GIB = {"8 GB": 7.6, "12 GB": 11.5, "16 GB": 15.5, "24 GB": 22.5}


def _row(config, plan) -> dict:
    from engine.training.memory_plan import _block_flops, checkpointable_blocks, estimate_phases

    estimate = estimate_phases(config, plan)
    recomputed = sum(_block_flops(config, b) for b in checkpointable_blocks(config) if b.name in plan.checkpointed)
    return {"blocks_checkpointed": len(plan.checkpointed), "recompute_share": round(plan.share, 4),
            "recomputes_forward_share": round(plan.recompute_forward_share, 4),
            "recomputed_tflop_per_step": round(recomputed / 1e12, 3),
            "loop_peak_gib": estimate.phases["loop"], "run_peak_gib": round(estimate.peak_gib, 2),
            "required_gib": round(estimate.required_gib, 2), "checkpointed": list(plan.checkpointed)}


def _simulate(config, plan, free: float) -> tuple[dict, float]:
    from engine.training.full_size_sim import simulate_training

    peaks = simulate_training(config, free, plan=plan)
    return peaks.phases, peaks.seconds


def simulated(plans: dict[str, tuple]) -> list[dict]:
    """Each (config, plan, free GiB) run by the full-size simulator: its phases' peaks beside the estimate's.
    Each in a fresh process: a simulation leaves autocast and mode state behind that a second one in the
    same process trips over."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    from bench.gpu_bench import save_configs
    from engine.training.memory_plan import estimate_phases

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = save_configs(Path(folder) / "sdxl")
        for name, (config, plan, free) in plans.items():
            config = config.model_copy(update={"base": str(base)})
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                phases, seconds = pool.submit(_simulate, config, plan, free).result()
            rows.append({"plan": name, "savers": plan.savers(), "recompute_share": round(plan.share, 4),
                         "free_gib": free, "simulated_phase_peak_gib": phases,
                         "estimated_phase_peak_gib": estimate_phases(config, plan).phases,
                         "seconds": round(seconds)})
            print(f"  simulated {name}: {phases} ({seconds:.0f} s)", flush=True)
    return rows


def main() -> None:
    import argparse

    from engine.training.config import TrainConfig
    from engine.training.memory_plan import block_table, choose_plan

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate", action="store_true", help="also run the full-size simulator (minutes)")
    args = parser.parse_args()

    report: dict = {"benchmark": "checkpointing", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "resolution": 1024, "lora_rank": 16, "memory": "estimated (engine.training.memory_plan)",
                    "table": block_table()["provenance"], "runs": []}
    for text in (False, True):
        base = dict(data=Path("photos"), out=Path("run"), resolution=1024, rank=16, train_text_encoder=text)
        fractions = []
        for fraction in FRACTIONS:
            config = TrainConfig(**base, gradient_checkpointing=fraction)
            fractions.append({"fraction": fraction, **_row(config, choose_plan(config, 80.0))})
        cards = []
        for card, free in CARDS_GIB.items():
            config = TrainConfig(**base)
            plan = choose_plan(config, free)
            cards.append({"card": card, "free_gib": free, "savers": plan.savers(), "reason": plan.reason,
                          "optimizer": plan.optimizer, **_row(config, plan)})
        report["runs"].append({"train_text_encoder": text, "fractions": fractions, "cards": cards})
        print(f"text encoders trained: {text}")
        for row in fractions:
            print(f"  fraction {row['fraction']:.1f}: {row['blocks_checkpointed']:2d} blocks, recomputes "
                  f"{row['recomputed_tflop_per_step']:.2f} TFLOP ({row['recomputes_forward_share']:.0%} of the "
                  f"forward), loop {row['loop_peak_gib']:.2f} GiB, run {row['run_peak_gib']:.2f} GiB")
        for row in cards:
            print(f"  {row['card']:5s} ({row['free_gib']} GiB free): {row['savers']}")
    if args.simulate:
        base = dict(data=Path("photos"), out=Path("run"), resolution=1024, rank=16)
        twelve = CARDS_GIB["12 GB"]
        plans = {mode: (TrainConfig(**base, gradient_checkpointing=mode), twelve) for mode in ("off", "auto", "on")}
        report["simulated"] = simulated({
            "none": (plans["off"][0], choose_plan(plans["off"][0], 80.0), 80.0),
            "12 GB auto (partial)": (plans["auto"][0], choose_plan(plans["auto"][0], twelve), twelve),
            "every block": (plans["on"][0], choose_plan(plans["on"][0], twelve), twelve)})
    path = save_report("checkpointing", report)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
