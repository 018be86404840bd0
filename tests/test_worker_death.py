"""A worker that dies without a word is told apart: out of memory in OpenBLAS, probably out of memory
when SIGKILLed while the kernel was killing for memory, otherwise its exit code.

The deaths are real processes dying that way: numpy's OpenBLAS meeting an address-space cap it cannot
map a buffer under, and a process sent SIGKILL. (A real worker cannot be steered into OpenBLAS's
failure rather than torch's allocator's, whose Python error the worker reports itself; and the
kernel's OOM killer is not something a test on a shared machine may set off.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.service.worker_death import OPENBLAS_OUT_OF_MEMORY, kernel_oom_kills, log_tail, worker_death

# Arrays first, then an address-space cap just above what the process holds, then a matrix product
# into an existing array: the only new memory asked for is OpenBLAS's own buffer.
_OPENBLAS_OUT_OF_MEMORY = """
import resource
import numpy as np

a, b, c = np.ones((512, 512)), np.ones((512, 512)), np.empty((512, 512))
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 20), resource.RLIM_INFINITY))
np.matmul(a, b, out=c)
print("the product fitted")
"""


def _uses_openblas() -> bool:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return "openblas" in blas.get("name", "").lower()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _uses_openblas(),
                    reason="needs numpy built with OpenBLAS, and Linux's /proc")
def test_openblas_failing_to_allocate_is_out_of_memory(tmp_path):
    log = tmp_path / "job-000001.log"
    with log.open("wb") as handle:
        handle.write(b"--- job 1 attempt 1\n")
        handle.flush()
        start = handle.tell()
        # As a worker writes its log: stdout and stderr into the file.
        died = subprocess.run([sys.executable, "-c", _OPENBLAS_OUT_OF_MEMORY], stdout=handle,
                              stderr=subprocess.STDOUT, env={"OPENBLAS_NUM_THREADS": "1"}, timeout=60)
    tail = log_tail(log, start)
    assert OPENBLAS_OUT_OF_MEMORY in tail and "Traceback" not in tail, tail  # no Python error to catch
    death = worker_death(died.returncode, tail, oom_kills=0, log="logs/job-000001.log")
    assert death.out_of_memory
    assert death.reason == (f"ran out of memory: OpenBLAS could not allocate its buffers and ended the worker "
                            f"(exit code {died.returncode}); see logs/job-000001.log")


def test_only_this_attempts_output_counts(tmp_path):
    log = tmp_path / "job.log"
    first = b"--- job 1 attempt 1\nOpenBLAS error: Memory allocation still failed after 10 retries, giving up.\n"
    log.write_bytes(first + b"--- job 1 attempt 2\nsegfault\n")
    tail = log_tail(log, len(first))
    assert tail == "--- job 1 attempt 2\nsegfault\n"
    assert not worker_death(-11, tail, oom_kills=0, log="logs/job.log").out_of_memory
    assert log_tail(tmp_path / "gone.log", 0) == ""


def test_sigkill_is_out_of_memory_only_when_the_kernel_was_killing_for_memory():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.send_signal(signal.SIGKILL)
    code = process.wait()
    assert code == -signal.SIGKILL

    # Someone's kill -9: the exit code, as before, and no offer to carry on elsewhere.
    plain = worker_death(code, "", oom_kills=0, log="logs/job-000002.log")
    assert not plain.out_of_memory
    assert plain.reason == "the worker process died (exit code -9); see logs/job-000002.log"
    # The kernel killed for memory while it ran: probably that, and said to be only probably.
    likely = worker_death(code, "", oom_kills=1, log="logs/job-000002.log")
    assert likely.out_of_memory and "probably out of memory" in likely.reason and "SIGKILL" in likely.reason
    # Any other death while the kernel was killing is not blamed on memory.
    assert not worker_death(1, "Traceback ...", oom_kills=3, log="").out_of_memory


def test_the_kernels_count_of_out_of_memory_kills(tmp_path):
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1000\noom_kill 7\nnr_zone_active_anon 3\n")
    assert kernel_oom_kills(vmstat) == 7
    vmstat.write_text("nr_free_pages 1000\n")  # a kernel before 4.13
    assert kernel_oom_kills(vmstat) is None
    assert kernel_oom_kills(tmp_path / "none") is None
    if Path("/proc/vmstat").is_file():
        assert isinstance(kernel_oom_kills(), int)
