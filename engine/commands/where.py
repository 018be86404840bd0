"""``likeness train``'s placement flags: --where, --gpu, --dry-run, --continue-on-modal.

Only argparse and engine.placement.gpus (no torch) load when the parser is built.
"""

from __future__ import annotations

import argparse
import sys

from engine.placement.gpus import GPU_NAMES


def add_where_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--where", choices=["auto", "local", "modal"], default="auto",
                        help="auto (default): this machine's GPU when the run fits it, else the cheapest Modal GPU "
                             "that does; local; or modal")
    parser.add_argument("--gpu", choices=GPU_NAMES, default=None, help="run on this Modal GPU (implies --where modal)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="print the decision (memory estimate, where, GPU, time and cost) and stop")
    parser.add_argument("--vram", type=float, metavar="GIB", default=None,
                        help="with --dry-run: plan as if this machine had a CUDA card with GIB free (a card you "
                             "might buy, or another machine's)")
    parser.add_argument("--continue-on-modal", dest="continue_on_modal", action="store_true",
                        help="if a local run runs out of GPU memory, carry on on Modal from its last checkpoint")


def decide_for(config, args: argparse.Namespace):
    """(config, decision): where ``config`` runs given the flags, against this machine's GPUs. A run
    on this CPU draws the smaller sample grids the Train screen plans for, unless the flags or the
    config file set them (engine.training.eta.sampled_as_on_the_cpu)."""
    from engine.placement.decision import decide, model_family, where_asked
    from engine.placement.gpus import detect_local_gpus
    from engine.settings import Settings
    from engine.training.checks import check_train_inputs
    from engine.training.eta import sampled_as_on_the_cpu

    # Data, --out, --base and --rank are checked before anything is decided: a mistyped --base must
    # be reported as such, not as a Modal error on a machine without a GPU.
    check_train_inputs(config, Settings(), in_the_cloud=where_asked(args.where, args.gpu, config.device) == "modal")
    # Asking CUDA loads torch (seconds); the tiny model and --device cpu stay here whatever it says.
    look = config.device != "cpu" and model_family(config) != "tiny"
    gpus = detect_local_gpus() if look else []
    vram = getattr(args, "vram", None)
    if vram is not None:
        gpus = [simulated_card(vram)]
    # A run on this machine's CPU chooses its savers against the RAM available (psutil: no torch).
    host_free = _ram_free_gib() if not gpus else None
    decision = decide(config, args.where, args.gpu, gpus, host_free_gib=host_free)
    if decision.where == "local" and decision.gpu is None:
        cpu_config = sampled_as_on_the_cpu(config)
        if cpu_config is not config:  # the sample batch follows the grid's size
            config, decision = cpu_config, decide(cpu_config, args.where, args.gpu, gpus, host_free_gib=host_free)
    return config, decision


def cpu_line(config, decision) -> str | None:
    """For a run on this machine's CPU: its rough time and the grids it draws; None elsewhere."""
    if decision.where != "local" or decision.gpu is not None:
        return None
    from engine.placement.decision import model_family
    from engine.training.eta import cpu_plan_line

    plan = decision.estimate.plan
    return cpu_plan_line(config, model_family(config), plan.sample_batch if plan else 1)


def simulated_card(free_gib: float):
    """The card ``--vram`` plans for: this much free (and as much in all), no name a speed is known by."""
    from engine.errors import LikenessError
    from engine.placement.gpus import LocalGpu

    if not 0 < free_gib <= 4096:
        raise LikenessError(f"--vram: a card's free memory in GiB, more than 0, got {free_gib:g}")
    return LocalGpu(0, f"a card with {free_gib:g} GiB free (--vram)", free_gib, free_gib)


def _ram_free_gib() -> float | None:
    from engine.models.device import Placement, free_memory_gib

    return free_memory_gib(Placement("cpu", "float32", None))


def train_where(config, decision, args: argparse.Namespace, settings, on_event):
    """Train where ``decision`` says; on a local out-of-memory with --continue-on-modal, carry on in the cloud."""
    from engine.events import Log
    from engine.placement.decision import choose_executor, plan_continue_on_modal
    from engine.training.stops import OutOfGpuMemory

    if decision.where == "modal":  # a local run says nothing extra: its errors stay one line
        print(f"likeness: training {_summary(decision)}", file=sys.stderr)
    try:
        return choose_executor(decision).train(config, settings, on_event)
    except OutOfGpuMemory as oom:
        if not args.continue_on_modal or decision.where != "local":
            raise
        cloud_config, cloud = plan_continue_on_modal(config, oom.checkpoint_step, args.gpu)
        on_event(Log(f"out of GPU memory locally; continuing {_summary(cloud)}"))
        return choose_executor(cloud).train(cloud_config, settings, on_event)


def _summary(decision) -> str:
    text = f"{decision.where} on {decision.gpu or 'the CPU'}"
    if decision.where == "modal" and decision.estimated_cost_usd is not None:
        text += f", about {decision.estimated_seconds / 60:.0f} min and ${decision.estimated_cost_usd:.2f}"
    return text
