"""Seamline: a geospatial segmentation model from the notebook to production.

The public API, one name per step of the pipeline (``docs/architecture.md`` maps the package)::

    import seamline

    scene = seamline.open_raster("scene.tif")
    model = seamline.load_model("my_model.pt")          # or "demo", a .pt2, an .onnx
    classes = seamline.predict_scene(model, scene)      # on exactly the scene's grid
    seamline.predict_file("big.tif", "classes.tif", model=model, cog=True)

Names load on first use (PEP 562), so ``import seamline`` stays light: the command line
starts without torch, and each import pulls in only its stage.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    # data
    "open_raster",
    "open_aoi",
    "write_raster",
    # prepare
    "prepare",
    "prepare_file",
    "fit_band_stats",
    "normalise",
    "BandStats",
    # models
    "load_model",
    "save_model",
    "SegmentationModel",
    # predict
    "predict_scene",
    "predict_file",
    "predict_file_distributed",
    "predict_tiled",
    # optimise
    "quantize",
    "save_quantized",
    "measure_latency",
    "quantization_report",
    # serve
    "ModelCache",
    # monitor
    "fit_baseline",
    "check",
    "assess_refit",
    "Baseline",
    "History",
    "monitor_series",
    "folder_series",
    # vector
    "polygonize",
    "write_polygons",
    # errors
    "SeamlineError",
]

_HOMES = {
    "open_raster": "seamline.core.data.io",
    "open_aoi": "seamline.core.data.io",
    "write_raster": "seamline.core.data.io",
    "prepare": "seamline.core.prepare.scene",
    "prepare_file": "seamline.core.prepare.scene",
    "fit_band_stats": "seamline.core.prepare.bandstats",
    "normalise": "seamline.core.prepare.bandstats",
    "BandStats": "seamline.core.prepare.bandstats",
    "load_model": "seamline.core.models.modelio",
    "save_model": "seamline.core.models.modelio",
    "SegmentationModel": "seamline.core.models.modelio",
    "predict_scene": "seamline.core.predict.scene",
    "predict_file": "seamline.core.predict.file",
    "predict_file_distributed": "seamline.core.predict.distributed",
    "predict_tiled": "seamline.core.predict.tiling",
    "quantize": "seamline.core.optimise.quantize",
    "save_quantized": "seamline.core.optimise.quantize",
    "measure_latency": "seamline.core.optimise.latency",
    "quantization_report": "seamline.core.optimise.latency",
    "ModelCache": "seamline.core.serve.cache",
    "fit_baseline": "seamline.core.monitor.fit",
    "check": "seamline.core.monitor.check",
    "assess_refit": "seamline.core.monitor.refit",
    "Baseline": "seamline.core.monitor.baseline",
    "History": "seamline.core.monitor.history",
    "monitor_series": "seamline.core.monitor.series",
    "folder_series": "seamline.core.monitor.series",
    "polygonize": "seamline.core.vector.polygonize",
    "write_polygons": "seamline.core.vector.writers",
    "SeamlineError": "seamline.core.errors",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its stage's module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'seamline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
