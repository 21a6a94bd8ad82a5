"""What machine a figure was measured on: CPU model, vector capability, threads."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from functools import cache

try:  # glibc only: see release_freed_memory
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None


@cache
def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:  # Linux; elsewhere platform.processor() suffices
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


@cache
def cpu_info() -> dict[str, str | int | bool]:
    """CPU model, torch's detected vector capability (AVX2 / AVX512 / ...), threads, AMX."""
    import torch

    model = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    flags = _cpu_flags()
    return {
        "cpu": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "amx": "amx_tile" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "cores": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def cpu_label() -> str:
    """One line to print beside every figure, e.g. ``Intel Xeon | AVX512 + AMX | 2 threads``."""
    info = cpu_info()
    extras = " + AMX" if info["amx"] else (" + VNNI" if info["avx512_vnni"] else "")
    return f"{info['cpu']} | {info['capability']}{extras} | {info['torch_threads']} threads"


def device_label(device: str = "cpu") -> str:
    """:func:`cpu_label` for a CPU; for a CUDA device its name and compute capability, e.g.
    ``NVIDIA H100 80GB HBM3 (sm 9.0)``, beside the CPU's."""
    if not device.startswith("cuda"):
        return cpu_label()
    import torch

    props = torch.cuda.get_device_properties(device)
    return f"{props.name} (sm {props.major}.{props.minor}); CPU {cpu_label()}"


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM on Linux: ru_maxrss survives exec there)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def bf16_is_native() -> bool:
    """Whether this CPU runs BF16 matmuls natively (AMX or AVX512-BF16); else it is emulated."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def no_huge_page_advice() -> bool:
    """Stop numpy advising transparent huge pages for new large arrays (its default on Linux);
    returns whether it advised them. For latency-bound servers.

    Where the kernel compacts memory on such a fault (``defrag`` = ``madvise``, the usual
    default), an allocation sometimes stalls: normalising a 2048^2 x 6 scene (a fresh 100 MB
    array) took 0.06 or 0.31 s, at random, with the advice and 0.08 s every time without
    (this machine, 8 runs each). Same as ``NUMPY_MADVISE_HUGEPAGE=0``, set after import.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        _set_madvise_hugepage = np.core.multiarray._set_madvise_hugepage
    return bool(_set_madvise_hugepage(False))


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Blocks allocate and free hundreds of MB of numpy/torch buffers each; glibc keeps freed
    chunks below its mmap threshold in the heap, so without a trim RSS climbs with the number
    of blocks (measured: 1.77 GB peak on 16384^2 without, see benchmarks/out_of_core.py).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
