"""Latency, size and agreement of a model at a precision and tile size.

:func:`measure_latency` times the model's forward on batches of tiles (warm-up excluded,
>= 30 timed runs) and reports p50/p95 per batch and per tile, megapixels/s, the process's
peak memory and the serialized model size. :class:`ModelCache` keeps models loaded,
quantized or compiled once per (model, precision, device, tile size) and process, so the
dashboard and the server never pay for that twice.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from seamline.core.errors import InvalidArgumentError
from seamline.core.hardware import cpu_label, peak_rss_bytes
from seamline.core.metrics import confusion_matrix, iou_per_class
from seamline.core.models.modelio import SegmentationModel, eval_mode
from seamline.core.models.onnx import OnnxModule
from seamline.core.optimise.quantize import state_dict_bytes
from seamline.core.predict.blocks import CLASS_NODATA
from seamline.core.predict.scene import predict_scene

__all__ = [
    "LatencyReport",
    "measure_latency",
    "model_size_bytes",
    "quantization_report",
]

MIN_RUNS = 30


@dataclass(frozen=True)
class LatencyReport:
    """Timed forward passes of one model at one precision, batch and tile size."""

    model: str
    precision: str
    tile_size: int
    batch_size: int
    runs: int
    batch_ms_p50: float
    batch_ms_p95: float
    tile_ms_p50: float
    tile_ms_p95: float
    megapixels_per_s: float
    peak_rss_mb: float
    size_mb: float
    cpu: str

    def to_dict(self) -> dict:
        """The report as a plain dict (JSON-ready)."""
        return asdict(self)


def model_size_bytes(model: SegmentationModel) -> int:
    """Serialized size: the INT8 ``.onnx`` bytes, else the FP32 state dict ``torch.save``
    writes (a BF16 model is FP32 weights run under autocast: the same size)."""
    module = getattr(model.module, "module", model.module)  # unwrap autocast
    if isinstance(module, OnnxModule):
        return module.size_bytes()
    return state_dict_bytes(module)


def measure_latency(
    model: SegmentationModel,
    *,
    tile_size: int = 256,
    batch_size: int = 1,
    runs: int = MIN_RUNS,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    channels_last: bool | None = None,
) -> LatencyReport:
    """Time ``runs`` forward passes of a ``(batch_size, bands, t, t)`` batch, after
    ``warmup`` untimed ones, on ``device``.

    Per-tile figures are per-batch figures divided by the batch size. ``peak_rss_mb`` is
    this process's high-water mark at the end (it includes what ran before).
    ``channels_last`` defaults to what :func:`~core.tiling.predict_tiled` feeds the model.
    """
    if runs < MIN_RUNS:
        raise InvalidArgumentError(f"runs must be >= {MIN_RUNS} for a p95, got {runs}")
    if tile_size % model.align:
        raise InvalidArgumentError(
            f"tile_size must be a multiple of {model.align} for model {model.name!r}, "
            f"got {tile_size}"
        )
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cpu" and getattr(model.module, "channels_last", True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module = eval_mode(model.module.to(device, memory_format=fmt))
    x = torch.randn(batch_size, len(model.bands), tile_size, tile_size, device=device)
    x = x.contiguous(memory_format=fmt)
    seconds = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    batch_p50, batch_p95 = np.percentile(seconds, [50, 95]) * 1000
    return LatencyReport(
        model=model.name,
        precision=model.precision,
        tile_size=tile_size,
        batch_size=batch_size,
        runs=runs,
        batch_ms_p50=float(batch_p50),
        batch_ms_p95=float(batch_p95),
        tile_ms_p50=float(batch_p50 / batch_size),
        tile_ms_p95=float(batch_p95 / batch_size),
        megapixels_per_s=batch_size * tile_size**2 / 1e6 / statistics.median(seconds),
        peak_rss_mb=peak_rss_bytes() / 2**20,
        size_mb=model_size_bytes(model) / 2**20,
        cpu=cpu_label(),
    )


def _agreement_and_miou(
    fp32: SegmentationModel,
    other: SegmentationModel,
    evaluation: Iterable[tuple[xr.DataArray, np.ndarray | None]] | None,
) -> dict:
    """Pixel agreement of ``other`` with ``fp32`` on the ``evaluation`` scenes (``(scene,
    labels)`` pairs), and both mIoUs when every scene has labels; ``None`` without them."""
    if evaluation is None:
        return {"pixel_agreement": None, "miou_fp32": None, "miou": None}
    classes = len(fp32.classes)
    cms = np.zeros((2, classes, classes), dtype=np.int64)
    same = total = 0
    labelled = True
    for scene, labels in evaluation:
        a, b = (predict_scene(m, scene, tile_size=256, blend="crop", device="cpu").values
                for m in (fp32, other))  # fmt: skip
        known = a != CLASS_NODATA
        same, total = same + int((a[known] == b[known]).sum()), total + int(known.sum())
        labelled &= labels is not None
        if labels is not None:
            labels = np.asarray(labels)
            cms += [confusion_matrix(labels[known], a[known], classes),
                    confusion_matrix(labels[known], b[known], classes)]  # fmt: skip
    miou_fp32, miou = (float(np.nanmean(iou_per_class(cm))) if labelled else None for cm in cms)
    return {"pixel_agreement": same / total, "miou_fp32": miou_fp32, "miou": miou}


def quantization_report(
    fp32: SegmentationModel,
    optimised: SegmentationModel,
    *,
    tile_size: int = 256,
    batch_size: int = 4,
    runs: int = MIN_RUNS,
    evaluation: Iterable[tuple[xr.DataArray, np.ndarray]] | None = None,
) -> dict:
    """Size, latency, agreement and mIoU of ``optimised`` against its ``fp32`` original.

    Agreement and mIoU are measured on ``evaluation``, scenes as ``(scene, labels)`` pairs
    (labels ``None``: agreement only; ``None`` in the report without scenes).

    FP32 is timed twice: as Seamline runs it (channels-last eager) and as plain PyTorch
    eager (NCHW), the baseline most users have; ``speedup`` is against the faster one.
    """
    timing = {"batch_size": batch_size, "tile_size": tile_size, "runs": runs}
    base = measure_latency(fp32, **timing)
    plain = measure_latency(fp32, channels_last=False, **timing)
    fast = measure_latency(optimised, **timing)
    return {
        "model": fp32.name,
        "precision": optimised.precision,
        "size_mb_fp32": base.size_mb,
        "size_mb": fast.size_mb,
        "size_ratio": fast.size_mb / base.size_mb,
        "latency_ms_p50_fp32": base.batch_ms_p50,
        "latency_ms_p50_fp32_nchw": plain.batch_ms_p50,
        "latency_ms_p50": fast.batch_ms_p50,
        "latency_ms_p95": fast.batch_ms_p95,
        "speedup": base.batch_ms_p50 / fast.batch_ms_p50,
        "speedup_vs_nchw_eager": plain.batch_ms_p50 / fast.batch_ms_p50,
        **_agreement_and_miou(fp32, optimised, evaluation),
        **timing,
        "cpu": base.cpu,
    }


