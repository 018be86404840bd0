"""The full-size simulation (engine.training.full_size_sim) in a child process: what the TUI and the
benchmark run, so minutes of CPU-bound Python neither hold the caller's interpreter nor leave torch
state behind, and a stop (SIGINT) unwinds the child, which deletes its temporary folder.

    simulate_in_child(config, free_gib, plan, on_progress=print, should_stop=lambda: False) -> SimulatedPeaks
    python -m engine.training.simulation_process < request.json   # the child: the result as JSON on stdout
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable

from engine.errors import LikenessError
from engine.training.config import TrainConfig
from engine.training.memory_plan import MemoryPlan

PROGRESS_PREFIX = "phase "
ERROR_PREFIX = "likeness: error: "


class SimulationStopped(LikenessError):
    """The caller asked the simulation to stop; the child left nothing behind."""


def simulate_in_child(config: TrainConfig, free_gib: float, plan: MemoryPlan, gpu_name: str = "simulated GPU",
                      on_progress: Callable[[str], None] = lambda phase: None,
                      should_stop: Callable[[], bool] = lambda: False):
    """``full_size_sim.simulate_training`` in a child; ``on_progress`` gets each phase's name as it
    begins; ``should_stop`` is asked at each and, when true, the child is interrupted."""
    from engine.training.full_size_sim import SimulatedPeaks

    request = {"config": config.model_dump(mode="json"), "free_gib": free_gib, "plan": plan.to_json(),
               "gpu_name": gpu_name}
    child = subprocess.Popen([sys.executable, "-m", "engine.training.simulation_process"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child.stdin.write(json.dumps(request))
        child.stdin.close()
        errors = []
        for line in child.stderr:  # one line a phase: stdout stays small, so this cannot dead-lock
            if should_stop():
                child.send_signal(signal.SIGINT)
                child.wait()
                raise SimulationStopped("the simulation was stopped")
            if line.startswith(PROGRESS_PREFIX):
                on_progress(line.removeprefix(PROGRESS_PREFIX).strip())
            elif line.strip():
                errors.append(line.strip())
        out = child.stdout.read()
        if child.wait() != 0:
            said = [line for line in errors if line.startswith(ERROR_PREFIX)]
            raise LikenessError(said[-1].removeprefix(ERROR_PREFIX) if said else
                                f"the simulation failed: {errors[-1] if errors else f'exit {child.returncode}'}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = json.loads(out)
    return SimulatedPeaks(result["simulated_phase_peak_gib"], MemoryPlan.from_json(result["savers"]),
                          result["free_gib"], result["seconds"])


def main() -> int:
    from engine.events import Phase
    from engine.training.full_size_sim import simulate_training

    request = json.loads(sys.stdin.read())

    def on_event(event) -> None:
        if isinstance(event, Phase) and event.fraction in (None, 0.0):
            print(PROGRESS_PREFIX + event.name, file=sys.stderr, flush=True)

    try:
        peaks = simulate_training(TrainConfig.model_validate(request["config"]), request["free_gib"],
                                  on_event=on_event, plan=MemoryPlan.from_json(request["plan"]),
                                  gpu_name=request["gpu_name"])
    except LikenessError as error:
        print(ERROR_PREFIX + str(error), file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(peaks.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
