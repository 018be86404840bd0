"""Placement: the VRAM estimate, the decision table (GPU sizes x configs), --dry-run, and the OOM handler."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import LikenessError, TrainingCancelled
from engine.placement.decision import SAFETY_MARGIN, decide, estimate_peak_vram, plan_continue_on_modal
from engine.placement.gpus import MODAL_GPUS, LocalGpu
from engine.training.config import TrainConfig
from engine.training.stops import is_out_of_memory, out_of_memory_error, stop_status


def config(**fields) -> TrainConfig:
    return TrainConfig(data=Path("photos"), out=Path("run"), **fields)


def card(free_gib: float, name: str = "NVIDIA GeForce RTX 4090") -> LocalGpu:
    return LocalGpu(0, name, free_gib + 0.5, free_gib)


def test_each_memory_saver_lowers_the_estimate():
    # Without sample grids: a grid's VAE decode can be the peak, and it hides the savers of the loop.
    def peak(**fields):
        return estimate_peak_vram(config(sample_every=0, **fields)).total_gib

    default = peak()
    for costly in ({"gradient_checkpointing": False}, {"optimizer": "adamw"}, {"cache_latents": False},
                   {"train_text_encoder": True}, {"mixed_precision": "no"}, {"batch_size": 2},
                   {"prior_preservation": True}):
        assert peak(**costly) > default, costly
    assert peak(rank=64) > peak(rank=4)
    assert peak(resolution=512) < default
    assert estimate_peak_vram(config()).total_gib >= default  # drawing grids never lowers the peak


def test_default_config_fits_the_12_gb_card_the_readme_promises():
    # The README says the defaults fit a 12 GB card; the estimate with its margin must agree.
    assert estimate_peak_vram(config()).required_gib <= 12.0


def test_bf16_and_fp16_weigh_the_same_and_fp32_twice():
    half = estimate_peak_vram(config(mixed_precision="bf16")).parts["UNet weights"]
    assert estimate_peak_vram(config(mixed_precision="fp16")).parts["UNet weights"] == half
    assert estimate_peak_vram(config(mixed_precision="no")).parts["UNet weights"] == pytest.approx(2 * half, abs=0.01)


CONFIGS = {
    "default": {},
    "512 px": {"resolution": 512},
    "no checkpointing": {"gradient_checkpointing": False},
    "text encoders, prior, batch 2": {"train_text_encoder": True, "prior_preservation": True, "batch_size": 2},
    "fp32, batch 4, no checkpointing": {"mixed_precision": "no", "batch_size": 4, "gradient_checkpointing": False},
}
LOCAL_FREE_GIB = [None, 7.5, 11.5, 23.0, 79.0]


@pytest.mark.parametrize("free", LOCAL_FREE_GIB, ids=lambda f: f"local {f} GiB free")
@pytest.mark.parametrize("name", CONFIGS)
def test_decision_table_follows_the_estimate(name, free):
    run = config(**CONFIGS[name])
    estimate = estimate_peak_vram(run)
    gpus = [] if free is None else [card(free)]
    if estimate.required_gib > max(g.vram_gib for g in MODAL_GPUS) and (free is None or estimate.required_gib > free):
        with pytest.raises(LikenessError, match="more than Modal's largest"):
            decide(run, "auto", None, gpus)
        return
    decision = decide(run, "auto", None, gpus)
    fits_here = free is not None and estimate.total_gib * (1 + SAFETY_MARGIN) <= free
    assert decision.fits_locally == fits_here
    if fits_here:
        assert (decision.where, decision.gpu, decision.estimated_cost_usd) == ("local", "NVIDIA GeForce RTX 4090", 0.0)
        return
    assert decision.where == "modal"
    chosen = next(g for g in MODAL_GPUS if g.name == decision.gpu)
    assert estimate.required_gib <= chosen.vram_gib
    # Cheapest of the GPUs that fit, by the estimated cost of the whole run.
    fitting = [g for g in MODAL_GPUS if estimate.required_gib <= g.vram_gib]
    costs = {g.name: decide(run, "modal", g.name).estimated_cost_usd for g in fitting}
    assert decision.estimated_cost_usd == pytest.approx(min(costs.values()))
    assert decision.estimated_cost_usd == pytest.approx(decision.estimated_seconds * chosen.usd_per_second)


def test_a_small_default_run_goes_to_an_a10g_without_a_local_gpu():
    decision = decide(config(), "auto", None, [])
    assert (decision.where, decision.gpu) == ("modal", "A10G")
    assert 0 < decision.estimated_cost_usd < 1.0 and decision.prices_as_of


def test_explicit_choices_are_obeyed_and_warned_about():
    small = card(5.5)  # a 6 GB card: too small for 1024 px even with every saver
    local = decide(config(), "local", None, [small])
    assert local.where == "local" and not local.fits_locally and "--continue-on-modal" in local.warnings[0]
    assert decide(config(), "modal", None, [card(79)]).where == "modal"
    assert decide(config(), "auto", "H100", [card(79)]).gpu == "H100"  # naming a cloud GPU means the cloud
    assert decide(config(base="tiny"), "auto", None, []).where == "local"
    assert decide(config(device="cpu"), "auto", None, [card(79)]).gpu is None
    with pytest.raises(LikenessError, match="--where local"):
        decide(config(), "local", "A10G", [])
    with pytest.raises(LikenessError, match="unknown Modal GPU"):
        decide(config(), "modal", "V100", [])


def test_cuda_n_device_is_judged_on_that_card():
    gpus = [LocalGpu(0, "big", 80, 79), LocalGpu(1, "small", 6, 5.5)]
    assert decide(config(device="cuda:1"), "auto", None, gpus).where == "modal"
    assert decide(config(device="cuda:0"), "auto", None, gpus).where == "local"
    # An 8 GB card with a desktop on it (7.6 GiB free) trains 1024 px / rank 16 itself.
    assert decide(config(device="cuda:1"), "auto", None, [gpus[0], LocalGpu(1, "8 GB", 8, 7.6)]).where == "local"


def test_dry_run_prints_the_decision_and_trains_nothing(capsys, tmp_path, photos):
    # The inputs are checked before deciding (not the local cache: Modal downloads the base itself).
    code = main(["train", "--data", str(photos), "--out", str(tmp_path / "run"), "--dry-run", "--device", "cuda:0",
                 "--where", "modal", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "estimated peak VRAM" in out and "where: modal on" in out and "estimated cost: $" in out
    assert "Modal prices as of" in out
    assert not (tmp_path / "run").exists()


def test_dry_run_of_the_tiny_model_stays_local(capsys, tmp_path, photos):
    assert main(["train", "--base", "tiny", "--data", str(photos), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "where: local" in capsys.readouterr().out


# The OOM path: no GPU here, so the handler is tested on real torch exceptions rather than by making a
# run run out of memory (raising one from a step hook would be a stand-in for the GPU).
def test_cuda_out_of_memory_maps_to_its_own_status():
    import torch

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 11.76 GiB total)")
    assert is_out_of_memory(oom) and stop_status(oom) == "out_of_memory"
    assert stop_status(TrainingCancelled()) == "cancelled"
    assert stop_status(KeyboardInterrupt()) == "interrupted"
    assert stop_status(RuntimeError("shape mismatch")) == "interrupted"


def test_out_of_memory_error_says_how_to_continue_on_modal():
    run = config()
    with_checkpoint = out_of_memory_error(run, "NVIDIA GeForce RTX 3060", 250)
    message = str(with_checkpoint)
    assert "\n" not in message and "RTX 3060" in message and "step 250" in message
    assert "--resume --where modal" in message and "--continue-on-modal" in message
    assert isinstance(with_checkpoint, LikenessError) and with_checkpoint.checkpoint_step == 250
    assert "--force --where modal" in str(out_of_memory_error(run, None, None))


def test_continuing_on_modal_resumes_from_the_checkpoint_or_starts_over():
    resumed, where = plan_continue_on_modal(config(), 250)
    assert resumed.resume and not resumed.force and where.where == "modal"
    fresh, _ = plan_continue_on_modal(config(), None)
    assert fresh.force and not fresh.resume
    # A CPU run that outgrew this machine's RAM takes the cloud's GPU.
    from_cpu, where = plan_continue_on_modal(config(device="cpu"), 10)
    assert from_cpu.device == "auto" and where.where == "modal"
