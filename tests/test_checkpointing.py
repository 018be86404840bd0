"""Gradient checkpointing by block: the plan per card, what it recomputes, and that it changes nothing else.

The cards are simulated by their free memory (``--vram``, or a number to ``choose_plan``); the per-block
table is the committed one (bench/checkpoint_blocks.py), checked here against a fresh count.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.cli import main
from engine.training.config import TrainConfig
from engine.training.memory_plan import (
    DECODE_TILES_PX,
    UNET_ACTIVATIONS_CHECKPOINTED_GIB,
    UNET_ACTIVATIONS_FULL_GIB,
    MemoryPlan,
    block_table,
    checkpointing_plan,
    choose_plan,
    estimate_phases,
)
from tests.conftest import tiny_train_config

# The cards of issue 25, by what they have free: 8, 12, 16 and 24 GB.
CARDS_GIB = {"8 GB": 7.6, "12 GB": 11.5, "16 GB": 15.5, "24 GB": 22.5}


def config(**fields) -> TrainConfig:
    return TrainConfig(data=Path("photos"), out=Path("run"), resolution=1024, rank=16, **fields)


def every_block(run: TrainConfig, optimizer: str = "adamw8bit") -> MemoryPlan:
    names = [b["name"] for b in block_table()["unet_blocks"]]
    if run.train_text_encoder:
        names += [b["name"] for b in block_table()["text_encoder_layers"]]
    return checkpointing_plan(run, MemoryPlan(False, optimizer), names)


@pytest.mark.parametrize("train_text_encoder", [False, True], ids=["unet", "text encoders too"])
@pytest.mark.parametrize("card", CARDS_GIB)
def test_each_card_gets_the_least_recomputation_that_fits(card, train_text_encoder):
    free = CARDS_GIB[card]
    run = config(train_text_encoder=train_text_encoder)
    plan = choose_plan(run, free)
    required = estimate_phases(run, plan).required_gib
    # Every block, the grid's decode in the smallest tiles: the most any plan can save.
    full = replace(every_block(run), decode_tile_px=min(DECODE_TILES_PX))
    full_required = estimate_phases(run, full).required_gib
    if full_required > free:
        # Not even every saver fits with the margin (the 8 GB card, by the estimate): every saver, said so.
        assert plan.share == 1.0 and plan.optimizer == "adamw8bit" and "even with every saver" in plan.reason
        if not train_text_encoder:
            assert estimate_phases(run, plan).peak_gib <= free  # without the margin it fits
        return
    assert required <= free, (card, plan.reason)
    # Wherever the memory allows, less than full checkpointing; at 1024/r16 the 12 GB card at most half.
    assert plan.share < 1.0
    if card == "12 GB" and not train_text_encoder:
        assert 0 < plan.share <= 0.5, plan.savers()
    if card == "24 GB":
        assert plan.share == 0.0 and not plan.checkpointed
    # The least that fits: keeping any one of its checkpointed blocks whole no longer fits (the blocks
    # of a few MB aside: they fall within the estimate's rounding to 10 MB).
    large = {b["name"] for b in block_table()["unet_blocks"] if b["gib"] >= 0.05}
    for name in set(plan.checkpointed) & large:
        looser = checkpointing_plan(run, plan, [n for n in plan.checkpointed if n != name])
        assert estimate_phases(run, looser).required_gib > free, name


def test_the_12_gb_card_recomputes_at_most_half_and_the_largest_blocks_first():
    plan = choose_plan(config(), CARDS_GIB["12 GB"])
    assert plan.recompute_share <= 0.5 and plan.gradient_checkpointing
    # The cheapest memory to win back is in the transformer blocks; the first stage's resnets keep nothing
    # for backward (no gradient flows before the first LoRA), so they are never recomputed.
    attention = [name for name in plan.checkpointed if ".attentions." in name]
    assert len(attention) >= 0.75 * len(plan.checkpointed)
    keep_nothing = {b["name"] for b in block_table()["unet_blocks"] if b["gib"] == 0}
    assert "down_blocks.0.resnets.0" in keep_nothing and not keep_nothing & set(plan.checkpointed)
    assert "recomputes" in plan.savers() and f"{len(plan.checkpointed)} of 28 blocks" in plan.savers()


def test_a_fraction_checkpoints_the_blocks_that_free_the_most_for_that_much_recomputation():
    loops = []
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        plan = choose_plan(config(gradient_checkpointing=fraction), 80.0)
        assert plan.share <= fraction + 1e-9
        loops.append(estimate_phases(config(), plan).phases["loop"])
    assert loops == sorted(loops, reverse=True) and len(set(loops)) == 5
    # The ends are off and on.
    assert choose_plan(config(gradient_checkpointing=0.0), 80.0).checkpointed == ()
    assert choose_plan(config(gradient_checkpointing=1.0), 80.0).share == 1.0
    assert choose_plan(config(gradient_checkpointing="on"), 80.0).share == 1.0


def test_the_table_sums_to_the_measured_difference_between_no_and_full_checkpointing():
    table = block_table()
    assert len(table["unet_blocks"]) == 28 and len(table["text_encoder_layers"]) == 12 + 32
    total = sum(b["gib"] for b in table["unet_blocks"])
    assert total == pytest.approx(UNET_ACTIVATIONS_FULL_GIB - UNET_ACTIVATIONS_CHECKPOINTED_GIB, rel=1e-3)
    # Scaled by no more than 10 %: the count itself agrees with the H200's measurement.
    assert table["provenance"]["scale"] == pytest.approx(1.0, abs=0.1)
    # The plan's ends are the estimate's measured points.
    run = config()
    none = checkpointing_plan(run, MemoryPlan(False, "adamw8bit"), [])
    assert estimate_phases(run, none).phases["loop"] == estimate_phases(run, MemoryPlan(False, "adamw8bit")).phases["loop"]
    assert (estimate_phases(run, every_block(run)).phases["loop"]
            == estimate_phases(run, MemoryPlan(True, "adamw8bit")).phases["loop"])


def test_the_committed_tiny_table_is_what_a_fresh_count_says(tiny_model):
    # Counting the tiny model's blocks takes seconds (SDXL's: a minute, by bench/checkpoint_blocks.py).
    from bench.checkpoint_blocks import measure

    fresh, committed = measure("tiny", tiny_model), block_table("tiny")
    assert fresh["unet_blocks"] == committed["unet_blocks"]
    assert fresh["text_encoder_layers"] == committed["text_encoder_layers"]
    assert fresh["unet_forward_flops"] == committed["unet_forward_flops"]


def sdxl_folder(tmp_path: Path) -> Path:
    """An SDXL-sized base as far as the plan goes: a diffusers folder (its weights are never read)."""
    base = tmp_path / "sdxl"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    return base


def test_dry_run_on_a_simulated_12_gb_card_shows_a_partial_plan_that_fits(capsys, tmp_path, dataset):
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--base", str(sdxl_folder(tmp_path)),
                 "--dry-run", "--vram", "11.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "local GPU: a card with 11.5 GiB free (--vram)" in out and "where: local" in out
    savers = next(line for line in out.splitlines() if line.startswith("savers:"))
    assert "gradient checkpointing on 7 of 28 blocks (" in savers and "% of the forward" in savers
    blocks = next(line for line in out.splitlines() if "checkpointed blocks:" in line)
    assert "up_blocks.1.attentions.0" in blocks and "down_blocks.0" not in blocks
    assert not (tmp_path / "run").exists()


def test_dry_run_json_names_the_checkpointed_blocks_and_the_recomputed_share(capsys, tmp_path, dataset):
    import json

    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--base", str(sdxl_folder(tmp_path)),
                 "--dry-run", "--vram", "11.5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["where"] == "local" and report["local_gpu"]["free_gib"] == 11.5
    savers = report["savers"]
    # The 12 GB card: part of the UNet, at most half of full checkpointing's recomputation.
    assert savers["gradient_checkpointing"] and 0 < savers["recompute_share"] <= 0.5
    assert "up_blocks.1.attentions.0" in savers["checkpointed_blocks"] and savers["blocks_total"] == 28
    assert report["required_gib"] <= 11.5


@pytest.mark.parametrize("flags, message", [
    (["--gradient-checkpointing", "1.5"], "--gradient-checkpointing: must be auto, on, off or a fraction from 0 to 1"),
    (["--gradient-checkpointing", "half"], "--gradient-checkpointing: must be auto, on, off or a fraction"),
    (["--vram", "12"], "--vram plans for a card this machine may not have: it goes with --dry-run"),
    (["--vram", "-1", "--dry-run"], "--vram: a card's free memory in GiB, more than 0"),
])
def test_bad_checkpointing_flags_are_one_line(flags, message, capsys, tmp_path, dataset):
    base = str(sdxl_folder(tmp_path))
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--base", base, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_partial_full_and_no_checkpointing_give_the_same_loss_curve(tmp_path, dataset, settings, tiny_model):
    import torch
    from safetensors.torch import load_file

    from engine.training.run_dir import RunDir
    from engine.training.trainer import SDXLLoRATrainer

    curves, checkpointed = {}, {}
    for mode in ("off", 0.5, "on"):
        run = tiny_train_config(dataset, tmp_path / str(mode), steps=3, sample_every=0, checkpoint_every=0,
                                gradient_checkpointing=mode, train_text_encoder=True)
        trainer = SDXLLoRATrainer(run, settings)
        trainer.run()
        curves[mode] = [row["loss"] for row in RunDir(run.out).read_metrics()]
        checkpointed[mode] = {name for name, module in [*trainer.unet.named_modules(),
                                                        *trainer.text_encoders[1].named_modules()]
                              if getattr(module, "_likeness_checkpointed", False)}
        record = json.loads(RunDir(run.out).run_json.read_text())["savers"]
        assert record["checkpointed_blocks"] == list(trainer.plan.checkpointed)
    assert curves["off"] == pytest.approx(curves["on"], rel=1e-5)
    assert curves[0.5] == pytest.approx(curves["on"], rel=1e-5)
    # And the same LoRA: the gradients through recomputed blocks are the ones kept activations give.
    loras = {mode: load_file(RunDir(tmp_path / str(mode)).lora) for mode in curves}
    assert set(loras["off"]) == set(loras["on"]) == set(loras[0.5])
    for key, weight in loras["on"].items():
        assert torch.allclose(loras["off"][key], weight, atol=1e-6) and torch.allclose(loras[0.5][key], weight, atol=1e-6)
    assert any(("lora_B" in key or "lora_up" in key) and weight.abs().max() > 0 for key, weight in loras["on"].items())
    # Each mode recomputed what it said: none, some, every block (text-encoder layers included).
    assert not checkpointed["off"] and 0 < len(checkpointed[0.5]) < len(checkpointed["on"])


def test_dry_run_names_a_text_encoders_consecutive_layers_as_one_range():
    from engine.placement.decision import block_list

    names = ["up_blocks.0.attentions.1", "text_encoder.layers.0", "text_encoder.layers.1",
             "text_encoder_2.layers.3", "text_encoder_2.layers.4", "text_encoder_2.layers.6"]
    assert block_list(names) == ("up_blocks.0.attentions.1, text_encoder.layers.0-1, text_encoder_2.layers.3-4, "
                                 "text_encoder_2.layers.6")
