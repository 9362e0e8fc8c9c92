"""Is there a usable CUDA device? Asked in a child process, because a failing CUDA start-up can end
the asking process (PyNvVideoCodec exits with code 1 on CUDA_ERROR_NO_DEVICE)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from functools import lru_cache

_PROBE = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
if cuda.cuInit(0) != 0:
    sys.exit(3)
count = ctypes.c_int(0)
if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
    sys.exit(4)
print(count.value)
"""


@lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when there is no driver or it fails."""
    if ctypes.util.find_library("cuda") is None:
        return 0
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else 0


def cuda_unavailable_reason(gpu_id: int) -> str | None:
    """Why GPU ``gpu_id`` cannot be used, or None when it can."""
    count = cuda_device_count()
    if count == 0:
        return "no usable CUDA device (no NVIDIA driver, or it reports none)"
    if not 0 <= gpu_id < count:
        return f"gpu_id {gpu_id} does not exist ({count} CUDA device(s))"
    return None
