"""The time left and the time a CPU run will take count the sample grids, not only the steps."""

from __future__ import annotations

from pathlib import Path

from engine.events import Phase
from engine.training.config import TrainConfig
from engine.training.eta import CPU_SAMPLING, cpu_seconds, eta_seconds, grid_number, grids_after, grids_in_run


def config(**values) -> TrainConfig:
    return TrainConfig(data=Path("."), out=Path("."), base="tiny", **values)


def test_grids_are_counted_from_step_zero_to_the_last_step():
    run = config(steps=10, sample_every=4)  # grids at 0, 4, 8 and 10
    assert grids_in_run(run) == 4
    assert [grid_number(run, s) for s in (0, 4, 8, 10)] == [1, 2, 3, 4]
    assert [grids_after(run, s) for s in (1, 4, 5, 8, 9, 10)] == [3, 2, 2, 1, 1, 0]
    assert grids_in_run(config(steps=10, sample_every=0)) == 0 and grids_after(config(sample_every=0), 3) == 0


def test_eta_adds_the_grids_left_at_the_last_grids_pace():
    assert eta_seconds(0.5, 10, None, 3) == 5.0
    assert eta_seconds(0.5, 10, 60.0, 3) == 185.0  # on a CPU the grids are most of the wait


def test_a_cpu_estimate_grows_with_steps_grids_and_size_and_shrinks_with_cpu_sampling():
    small = cpu_seconds(config(steps=30, resolution=64, sample_every=10), "tiny")
    assert 10 < small < 600
    assert cpu_seconds(config(steps=60, resolution=64, sample_every=10), "tiny") > small
    assert cpu_seconds(config(steps=30, resolution=128, sample_every=10), "tiny") > small
    assert cpu_seconds(config(steps=30, resolution=64, sample_every=10, **CPU_SAMPLING), "tiny") < small / 2
    assert cpu_seconds(config(steps=500, resolution=1024, sample_every=100), "sdxl") > 3600 * 8


def test_a_cpu_estimate_is_within_a_quarter_of_idle_runs_of_the_tiny_model():
    # Two runs on this machine's 2 cores, idle, with the CPU's sample grids drawn 2 at a time (run.json):
    # 500 steps at 384 px took 116 s, 30 steps at 1024 px 139 s (the first estimates said 5 and 2 min).
    small = config(steps=500, resolution=384, sample_every=100, **CPU_SAMPLING)
    large = config(steps=30, resolution=1024, sample_every=100, **CPU_SAMPLING)
    assert 0.75 < cpu_seconds(small, "tiny", sample_batch=2) / 116 < 1.25
    assert 0.75 < cpu_seconds(large, "tiny", sample_batch=2) / 139 < 1.25


def test_a_cpu_estimate_draws_a_grid_in_batches_as_the_bench_measured():
    # bench/sample_bench.py: a 3 x 2 tiny grid at 128 px, 25 steps, took 0.47x the one-at-a-time time
    # drawn whole; the estimate's grids must shrink by about that, steps and loading unchanged.
    run = config(steps=10, resolution=128, sample_every=10, sample_steps=25)
    no_grids = cpu_seconds(run.model_copy(update={"sample_every": 0}), "tiny")
    one_at_a_time = cpu_seconds(run, "tiny") - no_grids
    whole = cpu_seconds(run, "tiny", sample_batch=6) - no_grids
    assert 0.4 < whole / one_at_a_time < 0.55
    assert cpu_seconds(run, "tiny", sample_batch=2) - no_grids > whole


def test_a_phase_reads_as_what_the_run_is_doing():
    assert Phase("sampling", 2, 5, 0.4).describe() == "drawing sample grid 2/5 40%"
    assert Phase("sampling", 1, 3).describe() == "drawing sample grid 1/3"
    assert Phase("caching").describe() == "caching latents and prompt embeddings"


def test_the_cli_draws_a_cpu_runs_grids_as_the_train_screen_plans_and_its_bar_shows_one_rate(capsys, tmp_path,
                                                                                              dataset, tiny_model):
    import json
    import re

    from engine.cli import main

    out = tmp_path / "cli-cpu"
    argv = ["train", "--base", "tiny", "--data", str(dataset), "--out", str(out), "--resolution", "64",
            "--steps", "2", "--sample-every", "2", "--checkpoint-every", "0"]
    assert main([*argv, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "sample batch 2" in planned  # the TUI's batch: two prompts, one seed
    assert re.search(r"^time: (under a minute|~\d+ min) on this CPU.*2 sample grids of 2 prompts × 1 seed, "
                     r"8 steps each \(fewer than on a GPU", planned, re.M), planned

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "likeness: " in err and "2 sample grids of 2 prompts × 1 seed, 8 steps each" in err
    record = json.loads((out / "run.json").read_text())["config"]
    assert (record["sample_steps"], record["sample_seeds"], len(record["validation_prompts"])) == (8, [0], 2)
    # One rate on the bar, the engine's, and time left that counts the grids; not tqdm's own.
    bar = [line for line in re.split(r"[\r\n]", err) if "/2 [" in line]
    assert bar and all(line.count("/step") <= 1 for line in bar), bar
    assert not any(re.search(r"\d(s/step|step/s)", line) for line in bar), bar

    # What the user gives wins: a flag, or here a config file's seeds and steps.
    config_file = tmp_path / "seeds.toml"
    config_file.write_text("sample_seeds = [0, 1, 2]\nsample_steps = 3\n")
    assert main([*argv, "--dry-run", "--config", str(config_file)]) == 0
    assert "2 sample grids of 2 prompts × 3 seeds, 3 steps each" in capsys.readouterr().out
