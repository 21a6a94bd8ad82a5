"""One inference run as the dashboard and the HTML report see it: settings in, map and figures out.

:class:`RunSettings` is the plain, hashable set of choices (tile size, overlap, blend, batch,
precision, device); :func:`run_inference` predicts a scene with them through the warm
:class:`~seamline.core.serve.cache.ModelCache` and returns the class map with its latency figures;
(:mod:`seamline.core.serve.seams` sets a scene's tilings against its untiled run.)
No UI here: the same calls run in a batch job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TypeVar

import xarray as xr

from seamline.core.optimise.auto import Choice
from seamline.core.optimise.latency import model_size_bytes
from seamline.core.predict.blocks import TileTimer
from seamline.core.predict.scene import predict_scene
from seamline.core.predict.tiling import pick_device
from seamline.core.serve.cache import ModelCache

__all__ = [
    "RunSettings",
    "RunResult",
    "run_inference",
    "ON_CALIBRATION_TILES",
    "UNTILED_MAX_PIXELS",
]

ON_CALIBRATION_TILES = "calibration tiles"
"""``RunResult.agreement_on`` of an auto run compared with no FP32 run of its scene."""
UNTILED_MAX_PIXELS = 2048 * 2048
"""Largest scene the seam report runs untiled (the whole raster in one forward pass)."""


@dataclass(frozen=True)
class RunSettings:
    """The choices of one run; hashable, so results can be cached per parameter set."""

    tile_size: int = 256
    overlap: int = 32
    blend: str = "cosine"
    batch_size: int = 1
    precision: str = "fp32"
    device: str = "cpu"

    def tiling(self) -> dict:
        """Keyword arguments for :func:`seamline.core.predict.scene.predict_scene`."""
        return {
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "blend": self.blend,
            "batch_size": self.batch_size,
            "device": self.device,
        }

    def label(self) -> str:
        """A short name for tables and charts, e.g. ``int8 t256 o32 cosine b1``."""
        return f"{self.precision} t{self.tile_size} o{self.overlap} {self.blend} b{self.batch_size}"


@dataclass(frozen=True, eq=False)
class RunResult:
    """A class map and the figures of the run that made it."""

    settings: RunSettings
    classes: xr.DataArray
    seconds: float
    tiles: int
    tile_ms_p50: float
    tile_ms_p95: float
    forward_s: float  # the model's calls (the rest: normalising, blending, class ids)
    megapixels_per_s: float
    size_mb: float
    agreement_fp32: float | None = None
    agreement_on: str = ""  # "scene", or ON_CALIBRATION_TILES
    backend: str = ""  # what ran: the precision, or the backend auto picked
    choice: Choice | None = None  # what auto measured and why it picked this backend

    def row(self) -> dict:
        """One row of the runs table."""
        return {
            "run": self.settings.label(),
            **asdict(self.settings),
            "backend": self.backend,
            "seconds": self.seconds,
            "tiles": self.tiles,
            "tile_ms_p50": self.tile_ms_p50,
            "tile_ms_p95": self.tile_ms_p95,
            "forward_s": self.forward_s,
            "megapixels_per_s": self.megapixels_per_s,
            "size_mb": self.size_mb,
            "agreement_fp32": self.agreement_fp32,
            "agreement_on": self.agreement_on,
        }


def _backend_name(model) -> str:
    """``fp32``, ``bf16`` or ``int8``, ``+compile`` when compiled."""
    compiled = hasattr(model.module, "eager")  # optimise.backends.FixedBatch
    return model.precision + ("+compile" if compiled else "")


_BUILDS = ThreadPoolExecutor(4, thread_name_prefix="seamline-build")
"""Builds a run's model (a quantization, auto's measurement: seconds to a minute) while the
run waits on it: the run can stop waiting, and the build still ends in the cache."""
T = TypeVar("T")


def _built(build: Callable[[], T], waiting: Callable[[], None] | None) -> T:
    """``build()``, calling ``waiting()`` every 0.1 s until it ends (``waiting`` raising stops
    the wait; the build goes on in its thread)."""
    if waiting is None:
        return build()
    future = _BUILDS.submit(build)
    while True:
        try:
            return future.result(timeout=0.1)
        except TimeoutError:
            waiting()


def run_inference(
    scene: xr.DataArray,
    settings: RunSettings,
    cache: ModelCache,
    *,
    model: str,
    reference: xr.DataArray | None = None,
    progress: Callable[[int, int], None] | None = None,
    notify: Callable[[str], None] | None = None,
    waiting: Callable[[], None] | None = None,
) -> RunResult:
    """Predict ``scene`` with ``settings``; the model comes warm from ``cache``.
    ``reference``, an FP32 class map of the same scene, gives the pixel agreement; without
    one, an ``auto`` run gives the agreement its choice measured on calibration tiles.
    ``notify`` hears when ``auto`` starts measuring the backends (once per machine).
    ``waiting`` is called every 0.1 s while the model is built or measured (in a thread of
    its own): raising there (a Cancel) ends the run at once, and the cache keeps the build.

    An INT8 model is calibrated on the model's default calibration scenes: the model
    ``seamline quantize`` and ``serve-api`` make, the same for every scene and session of a
    process (so it can be built at server start). On the Sentinel-2 demo scene it agrees with
    FP32 on 99.72 % of pixels, against 99.68 % when calibrated on that scene itself."""
    pick_device(settings.device)  # an unknown device is a clear error before any work
    # INT8 and auto calibrate on the cache's default calibration for the demo model, on the
    # scene they predict for a model without calibration data of its own
    own = None if model == "demo" and cache.calibration else lambda _model: scene
    if settings.precision == "auto":
        ready, choice = _built(lambda: cache.auto(
            model, tile_size=settings.tile_size, device=settings.device,
            batch_size=settings.batch_size, calibration=own, notify=notify), waiting)  # fmt: skip
    else:
        ready, choice = _built(lambda: cache.get(
            model, precision=settings.precision, device=settings.device,
            calibration=own), waiting), None  # fmt: skip
    timer = TileTimer()
    start = time.perf_counter()
    classes = predict_scene(
        ready, scene, progress=progress, timing=timer.record, **settings.tiling()
    )
    seconds = time.perf_counter() - start
    backend = _backend_name(ready)
    agreement, agreement_on = None, ""
    if reference is not None:
        valid = classes.values != classes.rio.nodata
        agreement = float((classes.values == reference.values)[valid].mean())
        agreement_on = "scene"
    elif choice is not None:
        agreement_on = ON_CALIBRATION_TILES
        agreement = next(m.agreement for m in choice.measurements if m.backend == backend)
    return RunResult(
        settings=settings,
        classes=classes,
        seconds=seconds,
        tiles=len(timer.tile_seconds),
        megapixels_per_s=scene.sizes["y"] * scene.sizes["x"] / 1e6 / seconds,
        size_mb=model_size_bytes(ready) / 2**20,
        agreement_fp32=agreement,
        agreement_on=agreement_on,
        backend=backend,
        choice=choice,
        **timer.summary(),
    )
