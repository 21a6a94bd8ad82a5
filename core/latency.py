"""Latency of a model at a precision and tile size, and the warm model cache.

:func:`measure_latency` times the model's forward on batches of tiles (warm-up excluded,
>= 30 timed runs) and reports p50/p95 per batch and per tile, megapixels/s, the process's
peak memory and the serialized model size. :class:`ModelCache` keeps models loaded,
quantized or compiled once per (model, precision, device, tile size) and process, so the
dashboard and the server never pay for that twice.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.errors import InvalidArgumentError
from core.hardware import bf16_is_native, cpu_label, peak_rss_bytes
from core.modelio import SegmentationModel, load_model, with_precision
from core.tiling import eval_mode

__all__ = [
    "LatencyReport",
    "measure_latency",
    "model_size_bytes",
    "quantization_report",
    "ModelCache",
    "PRECISIONS",
]

PRECISIONS = ("fp32", "bf16", "int8")
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
    from core.quantize import OnnxModule, state_dict_bytes

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


def _agreement_and_miou(fp32: SegmentationModel, other: SegmentationModel) -> dict:
    """Pixel agreement of ``other`` with ``fp32`` and both mIoUs on the held-out labelled
    synthetic scenes; ``None`` for a model that does not read the synthetic bands."""
    from core.metrics import confusion_matrix, iou_per_class
    from core.synthetic import BANDS
    from core.train import held_out_predictions

    if not set(fp32.bands) <= set(BANDS):
        return {"pixel_agreement": None, "miou_fp32": None, "miou": None}
    classes = len(fp32.classes)
    cms = np.zeros((2, classes, classes), dtype=np.int64)
    same = total = 0
    for (labels, a), (_, b) in zip(
        held_out_predictions(fp32), held_out_predictions(other), strict=True
    ):
        cms += [confusion_matrix(labels, a, classes), confusion_matrix(labels, b, classes)]
        same, total = same + int((a == b).sum()), total + a.size
    miou_fp32, miou = (float(np.nanmean(iou_per_class(cm))) for cm in cms)
    return {"pixel_agreement": same / total, "miou_fp32": miou_fp32, "miou": miou}


def quantization_report(
    fp32: SegmentationModel,
    optimised: SegmentationModel,
    *,
    tile_size: int = 256,
    batch_size: int = 4,
    runs: int = MIN_RUNS,
) -> dict:
    """Size, latency, agreement and mIoU of ``optimised`` against its ``fp32`` original.

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
        **_agreement_and_miou(fp32, optimised),
        **timing,
        "cpu": base.cpu,
    }


class ModelCache:
    """Models ready to run, built once per (model, precision, device).

    The tile size is not part of the key: eager, autocast and ONNX Runtime models all take
    any tile shape (ONNX Runtime's graph is exported with dynamic height and width), so
    changing it must not re-quantize. (A ``torch.compile``d model would need it.)

    ``calibration`` makes the INT8 tiles when a model is first quantized: a callable
    returning a scene or normalised tiles (it is only called on a miss). Thread-safe; one
    instance per process is the intended use (the dashboard and the server share it).

    ``freeze`` (for long-running servers) moves the objects alive after each build out of the
    cyclic garbage collector's reach (:func:`gc.freeze`). Exporting and quantizing leave ~300k
    long-lived Python objects behind (torch.export, onnxscript); with them frozen a full
    collection (Panel runs one whenever a browser session closes) no longer stalls the server
    for 0.3-1 s in the middle of a prediction. The cost: cyclic garbage alive at that moment
    is never collected, bounded by one freeze per model built.
    """

    def __init__(self, *, freeze: bool = False) -> None:
        self._models: dict[tuple, SegmentationModel] = {}
        self._lock = threading.Lock()
        self.freeze = freeze

    def __len__(self) -> int:
        return len(self._models)

    def get(
        self,
        spec: str | SegmentationModel = "demo",
        *,
        precision: str = "fp32",
        device: str = "cpu",
        calibration: Callable[[SegmentationModel], object] | None = None,
        trust_model: bool = False,
    ) -> SegmentationModel:
        """The model ``spec`` at ``precision``, loaded and prepared on first use.

        ``trust_model`` lets a model file run code when loaded (see
        :func:`core.modelio.load_model`)."""
        if precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        name = spec.name if isinstance(spec, SegmentationModel) else str(spec)
        key = (name, precision, str(device))
        with self._lock:  # held while building: two sessions never quantize twice
            if key not in self._models:
                model = load_model(spec, trust_model=trust_model)
                self._models[key] = _prepare(model, precision, calibration)
                if self.freeze:
                    gc.collect()
                    gc.freeze()
            return self._models[key]


def _prepare(
    model: SegmentationModel,
    precision: str,
    calibration: Callable[[SegmentationModel], object] | None,
) -> SegmentationModel:
    """``model`` at ``precision``; INT8 calibrates on ``calibration(model)`` (default: the
    synthetic scenes the demo bands describe)."""
    if precision == model.precision:
        return model
    if precision == "int8":
        from core.quantize import default_calibration, quantize

        return quantize(model, (calibration or default_calibration)(model))
    if precision == "bf16" and not bf16_is_native():
        warnings.warn("BF16 is emulated on this CPU: expect it slower than fp32.", stacklevel=3)
    return with_precision(model, precision)
