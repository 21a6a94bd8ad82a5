"""The process's warm models: one :class:`~seamline.core.serve.cache.ModelCache` shared by the
dashboard's sessions, the prediction service and the command line of one process.

This is where the product's defaults meet the demo: a model without calibration data of its
own is calibrated for INT8 on the demo's synthetic scenes when it reads their bands (the demo
model does); any other model is refused with a sentence asking for a calibration scene.
"""

from __future__ import annotations

import os

from seamline.app.cli_args import DEFAULT_MODEL, EO_TIMESERIES_ENV, MODELS_ENV, TRUST_MODEL_ENV
from seamline.core.demo.train import demo_calibration
from seamline.core.serve.cache import ModelCache

__all__ = [
    "MODELS",
    "DEFAULT_MODEL",
    "new_cache",
    "eo_folder_from_env",
    "models_from_env",
    "trusted_from_env",
]


def new_cache(*, freeze: bool = False, trusted: tuple[str, ...] = ()) -> ModelCache:
    """A model cache with the product's default INT8 calibration; ``trusted`` model files
    may run code when loaded (the operator said so with ``--trust-model``)."""
    return ModelCache(freeze=freeze, calibration=demo_calibration, trusted=trusted)


def models_from_env() -> tuple[str, ...]:
    """The dashboard's models (``seamline serve --model``), the default model without any."""
    return tuple(m for m in os.environ.get(MODELS_ENV, "").split(os.pathsep) if m) or (
        DEFAULT_MODEL,
    )


def trusted_from_env() -> tuple[str, ...]:
    """The dashboard's models when the operator trusts them (``--trust-model``), else none."""
    return models_from_env() if os.environ.get(TRUST_MODEL_ENV) == "1" else ()


def eo_folder_from_env() -> str:
    """The NDVI series folder configured for the dashboard, or ``""`` for none."""
    return os.environ.get(EO_TIMESERIES_ENV, "")


# Shared on purpose: sessions reuse the warm, quantized models.
MODELS = new_cache(freeze=True, trusted=trusted_from_env())
