"""What the machine behind the service offers: device, GPU and its memory, versions, Modal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from engine.service.models import SystemInfo
from engine.versions import library_versions


def system_info(home: Path) -> SystemInfo:
    device, name, free, total = _gpu()
    versions = {**library_versions(), "python": sys.version.split()[0]}
    return SystemInfo(device=device, gpu_name=name, vram_free_mb=free, vram_total_mb=total,
                      ram_available_mb=_ram_available_mb(), versions=versions,
                      modal_configured=modal_configured(), home=str(home))


def _ram_available_mb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available / 2**20


def _gpu() -> tuple[str, str | None, float | None, float | None]:
    # nvidia-smi first: asking torch for free memory opens a CUDA context in the API process,
    # which holds several hundred MB of the VRAM that training needs.
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.free,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            name, free, total = (part.strip() for part in out.splitlines()[0].split(","))
            return "cuda", name, float(free), float(total)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    # Without nvidia-smi, torch is the only way to ask; but importing it takes seconds (over 10 on a
    # loaded machine), so it is asked only where an NVIDIA device exists at all.
    if "torch" not in sys.modules and not any(Path("/dev").glob("nvidia[0-9]*")):
        return "cpu", None, None, None
    try:
        import torch
    except ImportError:
        return "cpu", None, None, None
    if not torch.cuda.is_available():
        return "cpu", None, None, None
    free_bytes, total_bytes = torch.cuda.mem_get_info()
    return "cuda", torch.cuda.get_device_name(), free_bytes / 2**20, total_bytes / 2**20


def modal_configured() -> bool:
    """A Modal token in the environment or in ~/.modal.toml (an empty file, as compose mounts, is none)."""
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    config = Path.home() / ".modal.toml"
    try:
        return "token_id" in config.read_text()
    except OSError:
        return False
