"""The per-phase memory estimate against measured points, and the savers each device calls for.

The only stand-in here is the device's free memory: a ``LocalGpu`` with 24 or 8 GiB free, or a number,
in place of asking CUDA (this machine has no GPU).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.cli import main
from engine.placement.decision import decide, plan_continue_on_modal
from engine.placement.gpus import MODAL_GPUS, LocalGpu
from engine.training.config import TrainConfig
from engine.training.memory_plan import PHASES, MemoryPlan, choose_plan, estimate_phases

MEASURED = Path(__file__).parent.parent / "bench" / "calibration" / "sdxl_phases_measured.json"
# Written by `python -m bench.sim_bench --save-calibration`: the full-size simulator's peaks per phase.
SIMULATED = MEASURED.with_name("sdxl_phases_simulated.json")


def config(**fields) -> TrainConfig:
    return TrainConfig(data=Path("photos"), out=Path("run"), **fields)


def card(free_gib: float) -> LocalGpu:
    return LocalGpu(0, "NVIDIA GeForce RTX 4090", free_gib + 0.5, free_gib)


POINTS = json.loads(MEASURED.read_text())["points"]


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p["name"][:60])
def test_each_phase_estimate_is_within_15_percent_of_its_measured_peak(point):
    run = config(sample_every=0, **point["config"])
    plan = MemoryPlan(run.gradient_checkpointing == "on", run.optimizer, **point["plan"])
    estimate = estimate_phases(run, plan).phases[point["phase"]]
    assert estimate == pytest.approx(point["gib"], rel=0.15), f"{estimate} GiB against {point['gib']} measured"


SIMULATED_ROWS = json.loads(SIMULATED.read_text())["rows"]


@pytest.mark.parametrize("row", SIMULATED_ROWS, ids=lambda r: r["name"])
def test_each_phase_estimate_is_at_or_above_its_simulated_peak_and_at_most_20_percent_above(row):
    # The simulation counts torch's allocations at full size (a floor: a card needs a few per cent more),
    # so the estimate may not go below it, nor far above it, for the plan the row ran with.
    run = config(steps=500, sample_every=100, **row["config"])
    estimate = estimate_phases(run, MemoryPlan.from_json(row["plan"])).phases
    for phase, simulated in row["simulated_phase_peak_gib"].items():
        assert simulated <= estimate[phase] <= simulated * 1.2, (phase, estimate[phase], simulated)


def test_the_simulated_rows_cover_every_card_and_what_changes_the_peak():
    names = {row["name"] for row in SIMULATED_ROWS}
    for card in ("8 GB", "12 GB", "24 GB"):
        assert f"{card}, default" in names
    for variant in ("512 px", "768 px", "rank 4", "rank 64", "batch 2", "text encoders trained", "prior preservation"):
        assert f"8 GB, {variant}" in names


def test_no_phase_of_the_staged_plan_peaks_above_the_loop():
    # The rule: loading, caching and sampling stay inside the training loop's own budget.
    for fields in ({}, {"resolution": 512}, {"batch_size": 2}, {"rank": 64}):
        run = config(**fields)
        plan = choose_plan(run, 8.0)
        phases = estimate_phases(run, plan).phases
        assert max(phases.values()) == phases["loop"], (fields, plan, phases)
    # 1024 px: the sample grids' decode goes in tiles to stay inside the loop's budget.
    assert choose_plan(config(), 8.0).decode_tile_px is not None


def test_sample_grids_denoise_as_many_images_at_once_as_fit_inside_the_loop():
    run = config(resolution=1024, rank=16)  # the default grid: 3 prompts x 2 seeds
    # An 8 GB card (checkpointing on, loop 6.3 GiB): part of the grid a pass, and one more image a pass
    # would make sampling the peak.
    small = choose_plan(run, 8.0)
    phases = estimate_phases(run, small).phases
    assert small.gradient_checkpointing and 1 <= small.sample_batch < 6 and phases["sampling"] <= phases["loop"]
    more = replace(small, sample_batch=small.sample_batch + 1)
    assert estimate_phases(run, more).phases["sampling"] > phases["loop"]
    # A 24 GB card (no checkpointing, loop 13 GiB): the whole grid in one pass, still inside the loop.
    big = choose_plan(run, 24.0)
    phases = estimate_phases(run, big).phases
    assert not big.gradient_checkpointing and big.sample_batch == 6 and phases["sampling"] <= phases["loop"]
    # Never more than the grid holds, and each image more is counted.
    assert choose_plan(config(resolution=1024, sample_seeds=(0,)), 80.0).sample_batch == 3
    tiled = replace(big, decode_tile_px=256)  # the denoise the larger part, not a whole image's decode
    assert (estimate_phases(run, tiled).phases["sampling"]
            > estimate_phases(run, replace(tiled, sample_batch=1)).phases["sampling"])
    # On the CPU the same rule holds against RAM; the tiny model's estimate is flat: the whole grid.
    on_cpu = choose_plan(run, 14.0, on_cpu=True)
    cpu_phases = estimate_phases(run, on_cpu, on_cpu=True).phases
    assert 1 <= on_cpu.sample_batch < 6 and cpu_phases["sampling"] <= cpu_phases["loop"]
    more = replace(on_cpu, sample_batch=on_cpu.sample_batch + 1)
    assert estimate_phases(run, more, on_cpu=True).phases["sampling"] > cpu_phases["loop"]
    assert choose_plan(config(base="tiny", resolution=64), 4.0, on_cpu=True).sample_batch == 6
    # The plan says it where the savers are said.
    assert big.to_json()["sample_batch"] == 6 and big.savers().endswith("sample batch 6")


def test_caching_one_image_at_a_time_is_a_fraction_of_eight_at_once():
    run = config()
    one = estimate_phases(run, MemoryPlan(True, "adamw8bit", vae_encode_batch=1)).phases["caching"]
    eight_unstaged = estimate_phases(run, MemoryPlan(True, "adamw8bit", vae_encode_batch=8, staged=False))
    assert one < eight_unstaged.phases["caching"] / 5


def test_auto_turns_checkpointing_off_on_a_24_gb_card_and_keeps_it_on_an_8_gb_one():
    run = config(resolution=1024, rank=16)
    big = decide(run, "auto", None, [card(24.0)])
    assert big.where == "local" and big.estimate.plan.gradient_checkpointing is False
    assert "no saver needed" in big.estimate.plan.reason
    # The TUI's Train line says the same, and why.
    assert "savers: gradient checkpointing off, torch AdamW, sample batch 6 (needs" in big.summary()
    small = decide(run, "auto", None, [card(8.0)])
    assert small.estimate.plan.gradient_checkpointing is True
    assert "without these savers" in small.estimate.plan.reason


def test_an_explicit_choice_always_wins():
    assert choose_plan(config(gradient_checkpointing="on"), 80.0).gradient_checkpointing is True
    off = choose_plan(config(gradient_checkpointing="off", optimizer="adamw8bit"), 8.0)
    assert (off.gradient_checkpointing, off.optimizer, off.reason) == (False, "adamw8bit", "as asked")
    # Written before 'auto', true/false still mean on/off.
    assert config(gradient_checkpointing=False).gradient_checkpointing == "off"


def test_unknown_free_memory_turns_every_auto_saver_on():
    plan = choose_plan(config(), None)
    assert (plan.gradient_checkpointing, plan.optimizer) == (True, "adamw8bit") and "unknown" in plan.reason


def test_a_resumed_run_keeps_its_checkpoints_optimizer():
    plan = choose_plan(config(), 80.0, optimizer_of_resumed_run="adamw8bit")
    assert plan.optimizer == "adamw8bit" and plan.gradient_checkpointing is False


def test_the_cpu_chooses_against_its_ram_too():
    # At 64 px the tiny model fits any RAM: no checkpointing, torch AdamW (twice as fast on the CPU).
    tiny = choose_plan(config(base="tiny", resolution=64), 4.0, on_cpu=True)
    assert (tiny.gradient_checkpointing, tiny.optimizer) == (False, "adamw") and "RAM" in tiny.reason
    # SDXL in fp32 on a 16 GB workstation: every saver.
    sdxl = choose_plan(config(), 14.0, on_cpu=True)
    assert (sdxl.gradient_checkpointing, sdxl.optimizer) == (True, "adamw8bit")


def test_cloud_gpus_are_judged_with_the_savers_the_trainer_will_choose_there():
    run = config()
    for offer in MODAL_GPUS:
        decision = decide(run, "modal", offer.name)
        assert decision.estimate.plan == choose_plan(run, offer.vram_gib)
    # An A10G (22.5 GiB) fits the run without checkpointing, so it trains 2.2x faster a step.
    a10g = decide(run, "modal", "A10G")
    assert a10g.estimate.plan.gradient_checkpointing is False
    with_ckpt = decide(config(gradient_checkpointing="on"), "modal", "A10G")
    assert a10g.estimated_seconds < with_ckpt.estimated_seconds
    _, carried_on = plan_continue_on_modal(run, 250)
    assert carried_on.estimate.plan == choose_plan(run, next(g for g in MODAL_GPUS if g.name == carried_on.gpu).vram_gib)


def test_dry_run_prints_each_phase_peak_and_the_savers_chosen(capsys, tmp_path, dataset):
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--dry-run", "--gpu", "A10G"])
    out = capsys.readouterr().out
    assert code == 0
    for label in ("caching", "load", "training loop", "sample grids"):
        line = next(x for x in out.splitlines() if x.strip().startswith(label))
        assert line.endswith("GiB"), line
    assert "savers: gradient checkpointing off, torch AdamW, sample batch 6 (" in out
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--dry-run", "--gpu", "A10G",
                 "--gradient-checkpointing"]) == 0
    assert "savers: gradient checkpointing on (every block, recomputes 95 % of the forward), torch AdamW, sample batch 1 (needs" in capsys.readouterr().out


def test_every_phase_is_reported():
    assert set(estimate_phases(config(), MemoryPlan(True, "adamw8bit")).phases) == set(PHASES)
