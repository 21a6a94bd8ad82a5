"""What machine a figure was measured on: CPU model, vector capability, threads."""

from __future__ import annotations

import os
import platform
from functools import cache


@cache
def cpu_info() -> dict[str, str | int]:
    """CPU model, torch's detected vector capability (AVX2 / AVX512 / ...), threads, AMX."""
    import torch

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:  # Linux; elsewhere platform.processor() suffices
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
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
