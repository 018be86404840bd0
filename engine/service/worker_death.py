"""Why a worker died without recording its end: out of memory where that shows, else its exit code.

A worker that runs out of memory in Python records that itself (engine.training.stops.is_out_of_memory).
Two ways of running out end the process before Python can say anything:

- OpenBLAS (numpy's BLAS), failing to map a buffer ten times over, prints one line and calls exit(1);
- the kernel's out-of-memory killer sends SIGKILL, which anyone else could send too.

The first leaves its line in the worker's log; the second is only likely when the kernel's count of
out-of-memory kills went up while the worker ran.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

# OpenBLAS's driver/others/memory.c, word for word up to the count of retries.
OPENBLAS_OUT_OF_MEMORY = "OpenBLAS error: Memory allocation still failed"
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class WorkerDeath:
    reason: str
    """One line for the job's row and event, naming the log."""
    out_of_memory: bool
    """Ran out of memory: the TUI offers to continue on a cloud GPU, as for a Python out-of-memory."""


def worker_death(exit_code: int, log_tail: str, oom_kills: int, log: str) -> WorkerDeath:
    """Why a worker that ended with ``exit_code`` died, from what this attempt last wrote to its log
    (``log_tail``) and how many processes the kernel killed for lack of memory while it ran (``oom_kills``)."""
    see = f"; see {log}" if log else ""
    if OPENBLAS_OUT_OF_MEMORY in log_tail:
        return WorkerDeath(f"ran out of memory: OpenBLAS could not allocate its buffers and ended the worker "
                           f"(exit code {exit_code}){see}", True)
    if exit_code == -signal.SIGKILL and oom_kills > 0:
        return WorkerDeath(f"the worker was killed (SIGKILL) while the kernel was killing processes for lack of "
                           f"memory: probably out of memory{see}", True)
    return WorkerDeath(f"the worker process died (exit code {exit_code}){see}", False)


def log_tail(path: Path, start: int) -> str:
    """The end of what was written to ``path`` after byte ``start`` (this attempt's part of its job's log)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(start, size - _TAIL_BYTES))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def kernel_oom_kills(vmstat: Path = Path("/proc/vmstat")) -> int | None:
    """How many processes the kernel's out-of-memory killer has killed since boot (Linux 4.13+; its
    cgroups' kills included); None where it does not say."""
    try:
        for line in vmstat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None
