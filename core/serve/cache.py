"""Warm models: loaded, quantized or compiled once per (model, precision, device) and process.

The dashboard, the prediction service and the command line share one :class:`ModelCache` per
process, so none of them pays for a load or a quantization twice.
"""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable

from seamline.core.errors import InvalidArgumentError, SeamlineWarning
from seamline.core.hardware import bf16_is_native
from seamline.core.models.modelio import (
    SegmentationModel,
    check_precision_device,
    load_model,
    with_precision,
)
from seamline.core.models.registry import PRECISIONS
from seamline.core.optimise.auto import Choice, auto_backend, not_measured
from seamline.core.optimise.quantize import quantize
from seamline.core.predict.plan import choose_tile_size

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
    :meth:`get` or, as the default for every model, to the cache. Thread-safe: callers of
    one entry wait for its build, callers of others do not; one instance per process is the
    intended use (the dashboard and the server share it).

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
        self._auto: dict[tuple, tuple[SegmentationModel, Choice | None]] = {}
        self._lock = threading.Lock()  # held briefly: the dictionaries
        self._building: dict[tuple, threading.Lock] = {}  # held while one entry builds
        self.freeze = freeze
        self.calibration = calibration
        self.trusted = frozenset(trusted)

    def __len__(self) -> int:
        return len(self._models)

    def get(
        self,
        spec: str | SegmentationModel,
        *,
        precision: str | None = "fp32",
        device: str = "cpu",
        calibration: Calibration | None = None,
        trust_model: bool = False,
    ) -> SegmentationModel:
        """The model ``spec`` at ``precision``, loaded and prepared on first use; ``None``:
        as its file is (FP32, or a quantized ``.onnx`` model's INT8), for what needs only
        its bands, classes and geometry.

        ``trust_model`` lets a model file run code when loaded (see
        :func:`seamline.core.models.modelio.load_model`)."""
        if precision is None:
            model = self._once(self._models, (_name(spec), None, str(device)),
                               lambda: self._load(spec, trust_model))  # fmt: skip
            with self._lock:  # the same object serves a later call at its precision
                self._models.setdefault((_name(spec), model.precision, str(device)), model)
            return model
        if precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        check_precision_device(precision, device)
        key = (_name(spec), precision, str(device))
        return self._once(self._models, key, lambda: _prepare(
            self._load(spec, trust_model), precision, calibration or self.calibration))

    def auto(
        self,
        spec: str | SegmentationModel,
        *,
        tile_size: int | None = None,
        batch_size: int = 1,
        device: str = "cpu",
        calibration: Calibration | None = None,
        calibrate: bool = False,
        trust_model: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> tuple[SegmentationModel, Choice | None]:
        """``spec`` at the backend ``--precision auto`` picks for a server or a page, and that
        choice: the fastest eager backend per tile that agrees with FP32 (their jobs never
        end; a compiled one would recompile for each new tile size while every client
        waits). Measured once per machine (the disk cache; ``notify`` hears when a measurement
        starts, up to a minute), built once per process, tile and batch size; sessions asking
        for other models meanwhile do not wait. Calibrated on ``calibration(model)``, else the
        cache's default calibration; ``calibrate``: INT8 calibrates on it even where the
        table keeps a graph (an operator's own calibration scene). A model that is not FP32
        (a quantized ``.onnx``) runs as it is (choice None). ``tile_size`` None: the model's
        own (:func:`~seamline.core.predict.plan.choose_tile_size`). Where the measurement
        fails (a foreign model, a scene too small to calibrate on) FP32 runs, with a warning
        saying why, and the next call tries again."""
        check_precision_device("fp32", device)
        fp32_key = (_name(spec), "fp32", str(device))

        def build() -> tuple[SegmentationModel, Choice | None]:
            model = self._models.get(fp32_key) or self.get(
                spec, precision=None, device=device, trust_model=trust_model)
            if model.precision != "fp32":
                return model, None
            source = calibration or self.calibration
            if source is None:
                raise InvalidArgumentError(
                    f"--precision auto needs calibration data for model {model.name!r}: "
                    f"pass a scene with its bands ({', '.join(model.bands)})."
                )
            scene, tile = source(model), choose_tile_size(model, tile_size)
            try:
                return auto_backend(model, scene, tile_size=tile, batch_size=batch_size,
                                    device=device, allow_compile=False, notify=notify,
                                    calibrate=calibrate)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 -- any step may fail on a foreign model
                raise _NotMeasured(str(exc)) from exc

        key = ("auto", _name(spec), tile_size, batch_size, str(device))
        try:
            return self._once(self._auto, key, build)
        except _NotMeasured as failed:  # not kept: the next call measures again
            warnings.warn(not_measured(_name(spec), failed), SeamlineWarning, stacklevel=2)
            return self.get(spec, device=device, trust_model=trust_model), None

    def _once(self, store: dict, key: tuple, build: Callable[[], object]):
        """``store[key]``, made by ``build()`` once: callers of one key wait for its build,
        callers of the others do not (a minute's measurement held every session up)."""
        with self._lock:
            if key in store:
                return store[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in store:  # built while this caller waited
                    return store[key]
            value = build()
            with self._lock:
                store[key] = value
            self._frozen()
            return value

    def _load(self, spec: str | SegmentationModel, trust_model: bool) -> SegmentationModel:
        trust = trust_model or (isinstance(spec, str) and spec in self.trusted)
        return load_model(spec, trust_model=trust)

    def _frozen(self) -> None:
        """After a build: its long-lived objects out of the cyclic collector's reach."""
        if self.freeze:
            gc.collect()
            gc.freeze()


class _NotMeasured(Exception):
    """Auto's measurement of a model failed (its cause chained): the model runs FP32."""


def _name(spec: str | SegmentationModel) -> str:
    return spec.name if isinstance(spec, SegmentationModel) else str(spec)


def _prepare(
    model: SegmentationModel,
    precision: str,
    calibration: Calibration | None,
) -> SegmentationModel:
    """``model`` at ``precision``; INT8 calibrates on ``calibration(model)``."""
    if precision == model.precision:
        return model
    if model.precision != "fp32":  # a quantized .onnx model has no FP32 weights to run
        raise InvalidArgumentError(
            f"Model {model.name!r} is quantized ({model.precision.upper()}): run it at "
            f"{model.precision} or auto, or pass its FP32 model for {precision}."
        )
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
