"""The one line `likeness serve` prints when the engine sees no CUDA GPU, and why it sees none.

In the Docker image a GPU can fail to arrive in two ways: no device reaches the container (no NVIDIA
Container Toolkit, or compose.cpu.yaml), or the host's driver is older than torch's CUDA build. Either
way the engine keeps serving, so `restart: unless-stopped` has nothing to restart: SDXL training goes
to Modal and the tiny model runs on the CPU. This line says which it is, once, at start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Run in a child: importing torch takes seconds, and the API process should hold neither torch nor
# a CUDA driver handle (its workers are separate processes that open their own).
_PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    available = torch.cuda.is_available()
print(json.dumps({"cuda": torch.version.cuda, "available": available,
                  "warnings": [str(w.message) for w in caught]}))
"""

NO_DEVICE = "no NVIDIA device here; in Docker the NVIDIA Container Toolkit passes it in"


def no_cuda_reason(torch_cuda: str | None, available: bool, warnings: list[str]) -> str | None:
    """Why torch sees no CUDA GPU, from what the probe reported; None when it sees one."""
    if available:
        return None
    if torch_cuda is None:
        return "this torch is a CPU build"
    for message in warnings:
        if message.startswith("CUDA initialization: "):
            # torch's message is a paragraph of URLs; its first sentence says what is wrong.
            first = message.removeprefix("CUDA initialization: ").split(". ")[0].rstrip(".")
            fix = "; update the NVIDIA driver to R570 or newer" if "too old" in first else ""
            return f"torch's CUDA {torch_cuda} build: {first}{fix}"
    return f"torch's CUDA {torch_cuda} build finds no usable GPU"


def probe_torch(python: str = sys.executable, timeout: float = 300) -> str | None:
    """Ask ``python``'s torch whether it can use a CUDA GPU; the reason it cannot, or None."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return "torch could not be asked"
    return no_cuda_reason(report["cuda"], report["available"], report["warnings"])


def no_cuda_line(dev: Path = Path("/dev"), python: str = sys.executable) -> str | None:
    """The start-up line when the engine sees no CUDA GPU; None when it sees one."""
    # No device node at all: no driver to ask, so torch need not be imported.
    reason = probe_torch(python) if any(dev.glob("nvidia[0-9]*")) else NO_DEVICE
    if reason is None:
        return None
    return (f"likeness: the engine sees no CUDA GPU ({reason}): SDXL training will offload to Modal and the "
            "tiny model runs on the CPU; on a machine without a GPU, start the image with compose.cpu.yaml")
