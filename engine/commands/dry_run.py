"""``likeness train --dry-run``'s report: the decision in words or (``--json``) as one JSON object, and with
``--exact`` each phase's peak simulated at full size (engine.training.full_size_sim) beside the estimate."""

from __future__ import annotations

import json
import sys
import time

from engine.errors import LikenessError


def simulated_card(decision) -> tuple[float, str]:
    """The card the run would go to: (GiB free, its name). The local GPU's free memory, or the Modal
    GPU's whole memory."""
    from engine.placement.gpus import modal_gpu

    if decision.where == "local" and decision.local_gpu is not None:
        return decision.local_gpu.free_gib, decision.local_gpu.name
    if decision.where == "modal" and decision.gpu is not None:
        offer = modal_gpu(decision.gpu)
        return offer.vram_gib, offer.name
    raise LikenessError("the exact simulation is of a CUDA card, and this run goes to this machine's CPU "
                        "(`--dry-run --exact --gpu NAME` simulates a Modal GPU)")


def simulate_for(config, decision, settings, progress: bool = True):
    """The simulation of ``config`` on the card ``decision`` sends it to, with a progress line on stderr."""
    from engine.events import Phase
    from engine.training.full_size_sim import simulate_training

    free, name = simulated_card(decision)
    started = time.perf_counter()

    def on_event(event) -> None:
        if progress and isinstance(event, Phase) and event.fraction in (None, 0.0):
            elapsed = time.perf_counter() - started
            print(f"\rsimulating {card_words(name, free)}: {event.name}, {elapsed:.0f} s ",
                  end="", file=sys.stderr, flush=True)

    try:
        return simulate_training(config, free, settings, on_event=on_event, plan=decision.estimate.plan,
                                 gpu_name=f"simulated {name}")
    finally:
        if progress:
            print(file=sys.stderr, flush=True)


def report_json(decision, simulated=None) -> dict:
    """The whole plan: savers and why, each phase's estimate (and simulation), where, GPU, minutes, cost."""
    estimate = decision.estimate
    report = {
        "where": decision.where, "gpu": decision.gpu, "reason": decision.reason,
        "fits_locally": decision.fits_locally,
        "local_gpu": (None if decision.local_gpu is None else
                      {"name": decision.local_gpu.name, "free_gib": round(decision.local_gpu.free_gib, 2),
                       "total_gib": round(decision.local_gpu.total_gib, 2)}),
        "savers": estimate.plan.to_json() if estimate.plan is not None else None,
        "estimated_peak_gib": estimate.total_gib, "required_gib": round(estimate.required_gib, 2),
        "estimated_phase_peak_gib": estimate.phases,
        "estimated_parts_gib": estimate.parts,
        "estimated_minutes": None if decision.estimated_seconds is None else round(decision.estimated_seconds / 60, 1),
        "estimated_cost_usd": None if decision.estimated_cost_usd is None else round(decision.estimated_cost_usd, 2),
        "prices_as_of": decision.prices_as_of,
        "warnings": list(decision.warnings),
    }
    if simulated is not None:
        report.update(simulated_phase_peak_gib=simulated.phases, simulated_card_free_gib=round(simulated.free_gib, 2),
                      simulated_fits=fits(decision, simulated), simulation_seconds=round(simulated.seconds, 1))
    return report


def fits(decision, simulated) -> bool:
    """Whether the simulated peak, with what the count leaves out (the CUDA context), fits the card."""
    from engine.training.memory_plan import CUDA_CONTEXT_GIB

    return simulated.peak_gib + CUDA_CONTEXT_GIB <= simulated.free_gib


def describe_simulation(decision, simulated) -> str:
    """The lines --exact adds to --dry-run: each phase simulated beside its estimate, and the verdict."""
    from engine.training.memory_plan import CUDA_CONTEXT_GIB

    lines = [f"simulated at full size ({simulated.seconds:.0f} s), torch's allocations per phase "
             "(FakeTensorMode; cuDNN workspaces and the CUDA context not counted):"]
    for phase, gib in simulated.phases.items():
        estimate = decision.estimate.phases.get(phase)
        beside = f" (estimate {estimate:.2f})" if estimate is not None else ""
        lines.append(f"  {phase}: {gib:.2f} GiB{beside}")
    peak = simulated.peak_gib + CUDA_CONTEXT_GIB
    verdict = "fits" if fits(decision, simulated) else "does NOT fit"
    lines.append(f"simulated peak {peak:.2f} GiB with the CUDA context: {verdict} "
                 f"{card_words(decision.gpu, simulated.free_gib)}")
    return "\n".join(lines)


def card_words(name: str, free_gib: float) -> str:
    """'the 22.5 GiB free on A10G'; a --vram card's name says its free memory already."""
    return name if "GiB free" in name else f"the {free_gib:.1f} GiB free on {name}"


def print_dry_run(config, decision, settings, exact: bool, as_json: bool) -> None:
    from engine.commands.where import cpu_line
    from engine.training.eta import sampling_line

    simulated = simulate_for(config, decision, settings) if exact else None
    if as_json:
        report = report_json(decision, simulated)
        if report["estimated_minutes"] is None and decision.where == "local" and decision.gpu is None:
            report["estimated_minutes"] = round(cpu_minutes(config, decision), 1)
        print(json.dumps(report, indent=2))
        return
    print(decision.describe())
    # The time and the grids, as the Train screen's plan line says them.
    print(f"time: {cpu_line(config, decision) or sampling_line(config)}")
    if simulated is not None:
        print(describe_simulation(decision, simulated))


def cpu_minutes(config, decision) -> float:
    from engine.placement.decision import model_family
    from engine.training.eta import cpu_seconds

    plan = decision.estimate.plan
    return cpu_seconds(config, model_family(config), plan.sample_batch if plan else 1) / 60
