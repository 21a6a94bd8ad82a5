"""The process's warm models: one :class:`~seamline.core.serve.cache.ModelCache` shared by the
dashboard's sessions, the prediction service and the command line of one process.

This is where the product's defaults meet the demo: a model without calibration data of its
own is calibrated for INT8 on the demo's synthetic scenes when it reads their bands (the demo
model does); any other model is refused with a sentence asking for a calibration scene.
"""

from __future__ import annotations

import os

from seamline.app.cli_args import DEFAULT_MODEL, EO_TIMESERIES_ENV
from seamline.core.demo.train import demo_calibration
from seamline.core.serve.cache import ModelCache

__all__ = ["MODELS", "DEFAULT_MODEL", "new_cache", "eo_folder_from_env"]


def new_cache(*, freeze: bool = False) -> ModelCache:
    """A model cache with the product's default INT8 calibration."""
    return ModelCache(freeze=freeze, calibration=demo_calibration)


def eo_folder_from_env() -> str:
    """The NDVI series folder configured for the dashboard, or ``""`` for none."""
    return os.environ.get(EO_TIMESERIES_ENV, "")


MODELS = new_cache(freeze=True)  # shared on purpose: sessions reuse the warm, quantized models
