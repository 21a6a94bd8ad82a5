"""Warm models: loaded, quantized or compiled once per (model, precision, device) and process.

The dashboard, the prediction service and the command line share one :class:`ModelCache` per
process, so none of them pays for a load or a quantization twice.
"""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable

from seamline.core.errors import InvalidArgumentError
from seamline.core.hardware import bf16_is_native
from seamline.core.models.modelio import (
    SegmentationModel,
    check_precision_device,
    load_model,
    with_precision,
)
from seamline.core.models.registry import PRECISIONS
from seamline.core.optimise.quantize import quantize

__all__ = ["ModelCache", "Calibration"]

Calibration = Callable[[SegmentationModel], object]
"""Makes a model's INT8 calibration data: a scene with its bands, or normalised tiles."""


class ModelCache:
    """Models ready to run, built once per (model, precision, device).

    The tile size is not part of the key: eager, autocast and ONNX Runtime models all take
    any tile shape (ONNX Runtime's graph is exported with dynamic height and width), so
    changing it must not re-quantize. (A ``torch.compile``d model would need it.)

    ``calibration`` makes the INT8 tiles when a model is first quantized: a callable
    returning a scene or normalised tiles (it is only called on a miss), given to
    :meth:`get` or, as the default for every model, to the cache. Thread-safe; one
    instance per process is the intended use (the dashboard and the server share it).

    ``trusted`` names model files the operator trusts to run code when loaded (as
    ``trust_model`` does for one :meth:`get`).

    ``freeze`` (for long-running servers) moves the objects alive after each build out of the
    cyclic garbage collector's reach (:func:`gc.freeze`). Exporting and quantizing leave ~300k
    long-lived Python objects behind (torch.export, onnxscript); with them frozen a full
    collection (Panel runs one whenever a browser session closes) no longer stalls the server
    for 0.3-1 s in the middle of a prediction. The cost: cyclic garbage alive at that moment
    is never collected, bounded by one freeze per model built.
    """

    def __init__(
        self,
        *,
        freeze: bool = False,
        calibration: Calibration | None = None,
        trusted: tuple[str, ...] = (),
    ) -> None:
        self._models: dict[tuple, SegmentationModel] = {}
        self._lock = threading.Lock()
        self.freeze = freeze
        self.calibration = calibration
        self.trusted = frozenset(trusted)

    def __len__(self) -> int:
        return len(self._models)

    def get(
        self,
        spec: str | SegmentationModel,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        calibration: Calibration | None = None,
        trust_model: bool = False,
    ) -> SegmentationModel:
        """The model ``spec`` at ``precision``, loaded and prepared on first use.

        ``trust_model`` lets a model file run code when loaded (see
        :func:`seamline.core.models.modelio.load_model`)."""
        if precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        check_precision_device(precision, device)
        name = spec.name if isinstance(spec, SegmentationModel) else str(spec)
        key = (name, precision, str(device))
        with self._lock:  # held while building: two sessions never quantize twice
            if key not in self._models:
                trust = trust_model or (isinstance(spec, str) and spec in self.trusted)
                model = load_model(spec, trust_model=trust)
                self._models[key] = _prepare(model, precision, calibration or self.calibration)
                if self.freeze:
                    gc.collect()
                    gc.freeze()
            return self._models[key]


def _prepare(
    model: SegmentationModel,
    precision: str,
    calibration: Calibration | None,
) -> SegmentationModel:
    """``model`` at ``precision``; INT8 calibrates on ``calibration(model)``."""
    if precision == model.precision:
        return model
    if precision == "int8":
        if calibration is None:
            raise InvalidArgumentError(
                f"INT8 needs calibration data for model {model.name!r}: pass a scene with its "
                f"bands ({', '.join(model.bands)}), e.g. --calibration SCENE."
            )
        return quantize(model, calibration(model))
    if precision == "bf16" and not bf16_is_native():
        warnings.warn("BF16 is emulated on this CPU: expect it slower than fp32.", stacklevel=3)
    return with_precision(model, precision)
