"""Names a model can be given by instead of a path, and the precisions it can run at.

Light on purpose (no torch): the command line validates its arguments with these before it
imports anything heavy.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["PRECISIONS", "TORCH_PRECISIONS", "BUILTIN_MODELS", "builtin_model_path"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
"""Every precision a model runs at; INT8 runs on ONNX Runtime (:mod:`seamline.core.optimise`),
FP16 on a CUDA GPU only (a CPU emulates it)."""
TORCH_PRECISIONS = PRECISIONS[:3]
"""The precisions a torch module runs at directly
(:func:`seamline.core.models.modelio.with_precision`)."""

BUILTIN_MODELS = {"demo": ("seamline.core.demo", "assets/demo_unet.pt")}
"""Models shipped as package resources, by name: (package, resource)."""


def builtin_model_path(name: str) -> Path | None:
    """The weights file of a shipped model called ``name``, or ``None`` for any other name."""
    if name not in BUILTIN_MODELS:
        return None
    package, resource = BUILTIN_MODELS[name]
    return Path(str(files(package).joinpath(resource)))
