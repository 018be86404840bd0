"""bench.gpu_bench's model: SDXL base 1.0's exact shapes at scale 1, and at a small scale a model the
real trainer trains on the CPU, so the benchmark's code path is exercised without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_bench import build_models, save_model, step_flops
from engine.training import memory_plan

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_scale_one_is_sdxl_base_parameter_for_parameter():
    models = build_models(1.0, "meta")  # shapes only: no memory, no time
    count = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert count["unet"] == memory_plan.SDXL_UNET_PARAMS
    assert count["text_encoder"] + count["text_encoder_2"] == memory_plan.SDXL_TEXT_ENCODER_PARAMS
    assert count["vae"] == memory_plan.SDXL_VAE_PARAMS
    assert models["vae"].config.scaling_factor == 0.13025


@pytest.mark.slow
def test_a_step_is_counted_in_flops_on_the_meta_device():
    # A LoRA step is a forward and a backward through the frozen UNet: about twice the forward.
    one, two = step_flops(0.05, 1, 64), step_flops(0.05, 2, 64)
    assert one > 0 and two == pytest.approx(2 * one, rel=0.05)


@pytest.mark.slow
def test_a_small_scale_model_is_saved_and_trained_by_likeness(tmp_path, dataset, settings):
    from engine.training.run_dir import RunDir
    from engine.training.trainer import train
    from tests.conftest import tiny_train_config

    model = tmp_path / "sdxl-shaped"
    save_model(model, scale=0.05, device="cpu")
    assert (model / "model_index.json").is_file()
    out = tmp_path / "run"
    train(tiny_train_config(dataset, out, base=str(model), steps=1, sample_every=0, checkpoint_every=0), settings)
    assert RunDir(out).lora.is_file()


def test_without_a_cuda_gpu_it_stops_with_one_line():
    done = subprocess.run([sys.executable, "-m", "bench.gpu_bench"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("gpu_bench:")]
    assert lines == ["gpu_bench: needs a CUDA GPU and torch sees none (this benchmark cannot run on the CPU)"]
