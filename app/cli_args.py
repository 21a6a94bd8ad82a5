"""Arguments shared by several ``seamline`` subcommands (light: argparse only)."""

from __future__ import annotations

import argparse

__all__ = [
    "add_trust_model_flag",
    "DEFAULT_MODEL",
    "EO_TIMESERIES_ENV",
    "MODELS_ENV",
    "TRUST_MODEL_ENV",
]

DEFAULT_MODEL = "demo"
"""The model the dashboard and the commands use unless told otherwise (``--model``)."""
EO_TIMESERIES_ENV = "SEAMLINE_EO_TIMESERIES"
"""Environment variable naming the real NDVI series folder the dashboard offers as a drift
source (``seamline serve --eo-timeseries DIR`` sets it)."""
MODELS_ENV = "SEAMLINE_MODELS"
"""Environment variable naming the dashboard's models, separated by ``os.pathsep`` (``seamline
serve --model SPEC``, repeatable, sets it); the first is selected."""
TRUST_MODEL_ENV = "SEAMLINE_TRUST_MODEL"
"""``1`` when the operator trusts the dashboard's model files (``seamline serve
--trust-model``): they may run code when loaded."""


def add_trust_model_flag(parser: argparse.ArgumentParser) -> None:
    """``--trust-model`` on a command that loads a model (see SECURITY.md, "Models")."""
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a model file that runs code when loaded (a pickled full "
                        "model, a class outside Seamline): only for files you trust")
