"""What a device can do and what a model asks of it: a tile's GFLOP, the device's matmul peak
per precision (the "% of peak" of ``seamline bench`` and ``benchmarks/backends.py``), wall
seconds that wait for a GPU's queued work, and a model's forward timed per tile as the tiling
engine runs it (``--precision auto``'s measurements)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from seamline.core.models.modelio import SegmentationModel
from seamline.core.optimise.quantize import calibration_tiles

__all__ = [
    "MIN_AGREEMENT",
    "agreement",
    "classes_of",
    "input_format",
    "judged",
    "ms_per_tile",
    "peak_gflops",
    "scene_agreement",
    "tile_gflop",
    "wall_seconds",
]

RUNS = 5
"""Timed forward passes per candidate (after two warm-ups); the median is kept."""
MIN_AGREEMENT = 0.995
"""Share of calibration pixels whose class must equal FP32's for a backend to be kept."""


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


def input_format(model: SegmentationModel) -> torch.memory_format:
    """The layout the tiling engine feeds ``model`` (ONNX Runtime takes NCHW only)."""
    if getattr(model.module, "channels_last", True):
        return torch.channels_last
    return torch.contiguous_format


def classes_of(model: SegmentationModel, tiles: torch.Tensor, batch: int) -> torch.Tensor:
    """Class ids of ``tiles`` (run ``batch`` at a time, as the tiling engine feeds them)."""
    fmt = input_format(model)
    with torch.inference_mode():
        out = [model.module(tiles[i : i + batch].contiguous(memory_format=fmt)).float().argmax(1)
               for i in range(0, len(tiles), batch)]  # fmt: skip
    return torch.cat(out)


def agreement(classes: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of pixels whose class in ``classes`` equals FP32's ``reference``."""
    return float((classes == reference).float().mean())


def judged(share: float, what: str = "agrees") -> dict:
    """A backend's agreement ``share`` with FP32, whether that keeps it, and why not (a
    measurement's ``agreement``, ``kept`` and ``note``)."""
    kept = share >= MIN_AGREEMENT
    note = "" if kept else f"{what} on {share:.2%} < {MIN_AGREEMENT:.1%}"
    return {"agreement": share, "kept": kept, "note": note}


def scene_agreement(model: SegmentationModel, reference: SegmentationModel, scene, *,
                    tile_size: int, batch_size: int = 1, device: torch.device | str = "cpu",
                    count: int = 4) -> float:  # fmt: skip
    """The share of pixels of ``count`` tiles sampled across ``scene`` where ``model``'s
    classes equal those of ``reference`` (its FP32 model): how a model calibrated on another
    scene does on this one."""
    tiles = calibration_tiles(scene, reference, tile_size=tile_size, count=count)
    x = torch.from_numpy(tiles).to(device)
    return agreement(classes_of(model, x, batch_size), classes_of(reference, x, batch_size))


def ms_per_tile(model: SegmentationModel, tiles: torch.Tensor, batch: int,
                tile_size: int | None = None) -> float:  # fmt: skip
    """Median milliseconds per tile of ``RUNS`` forward passes of one batch (2 warm-ups), as
    the tile stream runs it: with ``parallel_forward`` (INT8 on ONNX Runtime), that many in
    flight (AMD EPYC, AVX-512, 2 threads: 47 ms per 512 px tile alone, 37 ms two at once).
    Tiles smaller than ``tile_size`` (those of a scene smaller than a tile) are timed padded
    to it, the size the jobs run: a 256 px tile costs a quarter of a 512 px one."""
    x = tiles[:batch]
    if tile_size is not None and min(x.shape[-2:]) < tile_size:
        short = [max(0, tile_size - side) for side in x.shape[-2:]]
        x = torch.nn.functional.pad(x, (0, short[1], 0, short[0]), mode="replicate")
    x = x.contiguous(memory_format=input_format(model))
    forward, calls = (model.module.parallel_forward() if hasattr(model.module, "parallel_forward")
                      else (model.module, 1))  # fmt: skip
    with torch.inference_mode(), ThreadPoolExecutor(calls) as pool:

        def run() -> None:  # a batch per call in flight, as the tile stream keeps them
            if calls == 1:
                forward(x)  # in this thread: inference mode and autocast are per thread
            else:
                list(pool.map(forward, [x] * calls))

        for _ in range(2):
            run()
        times = [wall_seconds(run, x.device) for _ in range(RUNS)]
    return 1000 * statistics.median(times) / (calls * len(x))
