"""What a device can do and what a model asks of it: a tile's GFLOP, the device's matmul peak
per precision (the "% of peak" of ``seamline bench`` and ``benchmarks/backends.py``), and
wall seconds that wait for a GPU's queued work."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from seamline.core.models.modelio import SegmentationModel

__all__ = ["peak_gflops", "tile_gflop", "wall_seconds"]


def tile_gflop(model: SegmentationModel, tile_size: int,
               device: torch.device | str = "cpu") -> float:  # fmt: skip
    """GFLOP of one tile's forward pass (multiply-adds counted as 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, len(model.bands), tile_size, tile_size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.module(x)
    return counter.get_total_flops() / 1e9


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_gflops(precision: str, *, side: int = 2048,
                device: torch.device | str = "cpu") -> float | None:  # fmt: skip
    """The device's measured matmul throughput at ``precision`` (GFLOP/s, best of 5 square
    matmuls of ``side``); None where there is no such matmul (INT8 without ``_int_mm``).
    A convolution can beat it (its data stays in cache); on a busy machine it reads low.
    On CUDA, FP32 is measured as convolutions run it (cuDNN's TF32 setting)."""
    device = torch.device(device)
    if precision == "int8":
        if not hasattr(torch, "_int_mm"):
            return None
        a = torch.randint(-8, 8, (side, side), dtype=torch.int8, device=device)
        run = lambda: torch._int_mm(a, a)  # noqa: E731
    else:
        a = torch.randn(side, side, dtype=_DTYPES[precision], device=device)
        run = lambda: a @ a  # noqa: E731
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        run()
        best = min(wall_seconds(run, device) for _ in range(5))
    except RuntimeError:
        return None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * side**3 / best / 1e9


def wall_seconds(run: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall seconds of ``run()``; on CUDA, with the device's queued work finished first
    and last (kernels run asynchronously)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
