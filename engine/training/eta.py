"""How long a run will take, and how long it has left, counting the sample grids as well as the steps.

The trainer reports an ETA with every step; the Train screen quotes a CPU run's time before it
starts. Both count sample grids, which on a CPU can take longer than all the steps together.
"""

from __future__ import annotations

from engine.training.config import DEFAULT_VALIDATION_PROMPTS, TrainConfig

# Measured here idle (2 CPU cores, tiny model, one image a step): 0.17 s a step at 384 px and 2.6 s at
# 1024 px; a grid of 2 images x 8 denoising steps drawn 2 at a time, 1.6-2.4 s at 384 px and 24.6 s at
# 1024 px (face scoring included). Time grows faster than the pixels (attention's cost is quadratic in
# them): a floor plus a part that scales as pixels ** exponent fits both sizes within 10 %. The first
# figures, measured under load, were several times off for small runs. SDXL on a CPU is rough
# (community reports: about a minute a step at 1024 px) and its scaling unmeasured, so linear.
# Per family: (s/step floor, s/step at 1024 px, s per sample denoising step floor, same at 1024 px,
# fixed seconds for loading and caching, exponent of the pixels).
_CPU_SECONDS = {"tiny": (0.1, 2.5, 0.06, 1.5, 10.0, 1.7), "sdxl": (0.0, 60.0, 0.0, 8.0, 120.0, 1.0)}
# Of a sample denoising step's floor, the part a batch pays once per pass rather than per image:
# bench/sample_bench.py drew a 6-image tiny grid at 128 px in 0.47x the one-at-a-time time, which a
# per-pass cost of about two thirds of the floor reproduces.
_PER_PASS_SHARE = 0.65

# A CPU draws each sample image step by step: fewer prompts, one seed and fewer denoising steps keep
# a grid to seconds for the tiny model instead of minutes (the user can still ask for more).
CPU_SAMPLING = {"sample_steps": 8, "sample_seeds": (0,), "validation_prompts": DEFAULT_VALIDATION_PROMPTS[:2]}


def grids_in_run(config: TrainConfig) -> int:
    """Sample grids a whole run draws: step 0, every ``sample_every`` steps, and the last step."""
    if not config.sample_every:
        return 0
    return 1 + config.steps // config.sample_every + (1 if config.steps % config.sample_every else 0)


def grid_number(config: TrainConfig, step: int) -> int:
    """Which grid (1-based) the one at ``step`` is."""
    every = config.sample_every
    return 1 + step // every + (1 if step % every else 0)


def grids_after(config: TrainConfig, step: int) -> int:
    """Sample grids still to draw once ``step`` and its grid (if it has one) are done."""
    if not config.sample_every:
        return 0
    every = config.sample_every
    drawn = 1 + step // every + (1 if step == config.steps and step % every else 0)
    return grids_in_run(config) - drawn


def eta_seconds(seconds_per_step: float, steps_left: int, seconds_per_grid: float | None, grids_left: int) -> float:
    """Time left: the steps at the recent pace, plus the grids at the last grid's pace."""
    return seconds_per_step * steps_left + (seconds_per_grid or 0.0) * grids_left


def cpu_seconds(config: TrainConfig, family: str, sample_batch: int = 1) -> float:
    """A rough wall time for ``config`` on this machine's CPU, sample grids included, drawn
    ``sample_batch`` images a denoising pass (the memory plan's)."""
    step_floor, step_1024, sample_floor, sample_1024, fixed, exponent = _CPU_SECONDS.get(family, _CPU_SECONDS["sdxl"])
    pixels = ((config.resolution / 1024) ** 2) ** exponent
    images = config.batch_size + (1 if config.prior_preservation else 0)
    per_step = (step_floor + step_1024 * pixels) * images
    per_pass = sample_floor * _PER_PASS_SHARE
    per_image = sample_floor * (1 - _PER_PASS_SHARE) + sample_1024 * pixels
    grid_images = len(config.validation_prompts) * len(config.sample_seeds)
    passes = -(-grid_images // max(1, sample_batch))
    per_grid = config.sample_steps * (passes * per_pass + grid_images * per_image)
    return fixed + config.steps * per_step + grids_in_run(config) * per_grid


def sampled_as_on_the_cpu(config: TrainConfig) -> TrainConfig:
    """``config`` with CPU_SAMPLING's smaller grids for each sampling field it was not given (a flag,
    a config file or the Train screen's form set it): the CLI and the TUI draw the same grids on a CPU."""
    unset = {key: value for key, value in CPU_SAMPLING.items() if key not in config.model_fields_set}
    if not unset or not config.sample_every:
        return config
    return TrainConfig.model_validate({**config.model_dump(exclude_unset=True), **unset})


def cpu_plan_line(config: TrainConfig, family: str, sample_batch: int = 1) -> str:
    """One line for a run on this machine's CPU: its rough time and the sample grids it draws."""
    minutes = cpu_seconds(config, family, sample_batch) / 60
    time = f"~{minutes:.0f} min on this CPU (rough)" if minutes >= 1 else "under a minute on this CPU"
    sampling = sampling_line(config)
    if config.sample_every and all(getattr(config, key) == value for key, value in CPU_SAMPLING.items()):
        sampling += " (fewer than on a GPU: a CPU draws them slowly)"
    return f"{time}; {sampling}"


def sampling_line(config: TrainConfig) -> str:
    """What each sample grid holds, in a few words."""
    if not config.sample_every:
        return "no sample grids"
    return (f"{grids_in_run(config)} sample grids of {len(config.validation_prompts)} prompts × "
            f"{len(config.sample_seeds)} seed{'s' if len(config.sample_seeds) != 1 else ''}, "
            f"{config.sample_steps} steps each")
