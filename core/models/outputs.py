"""The user's model as Seamline calls it: ``(B, bands, t, t)`` in, one ``(B, classes, t, t)``
tensor of logits out (docs/architecture.md "models/").

Segmentation libraries return other shapes: MONAI's deep-supervision networks a tuple or list
(the full-resolution map first), torchvision's ``{"out": ..., "aux": ...}``, encoders with a
light head a map at 1/4 or 1/8 of the input's resolution. :func:`dense_logits` looks at one
probe output and wraps such a model in :class:`DenseLogits`; everything downstream (tiling,
quantization export, latency) then sees a plain tensor model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DenseLogits", "OutputLayoutError", "dense_logits", "exported_tile"]

PROBE_TILE = 64
"""Side of the probe tile for a model with dynamic height and width (a multiple of 32)."""


class OutputLayoutError(TypeError):
    """A model output in which no logits tensor can be found."""


class DenseLogits(nn.Module):
    """``module``'s output as one logits tensor at the input's resolution: ``key`` picks the
    element of a tuple, list or dict, and a coarser map is upsampled bilinearly."""

    def __init__(self, module: nn.Module, key: int | str | None) -> None:
        super().__init__()
        self.module = module
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``x``, ``(B, classes, H, W)`` like ``x``."""
        y = self.module(x)
        if self.key is not None:
            y = y[self.key]
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


def exported_tile(module: nn.Module) -> int | None:
    """The tile side a ``torch.export`` module was exported for, if its height and width are
    static (and equal); None for any other module."""
    graph = getattr(module, "graph", None)
    for node in graph.nodes if graph is not None else ():
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            height, width = value.shape[-2:]
            static = isinstance(height, int) and isinstance(width, int) and height == width
            return height if static else None
    return None


def _key(output: object, preferred: str | None) -> int | str | None:
    """Where the logits are in one probe output (None: the output is the logits)."""
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return 0
    if isinstance(output, dict):
        for key in (preferred, "out", "logits"):
            if key in output:
                return key
    raise OutputLayoutError(
        f"it returns a {type(output).__name__}, not a tensor, a tuple or list of "
        'tensors, or a dict with "out" or "logits": name its key as "output" in the sidecar'
    )


def dense_logits(
    module: nn.Module, bands: int, *, tile: int | None = None, key: str | None = None
) -> tuple[nn.Module, str, int]:
    """``module`` wrapped in :class:`DenseLogits` if one probe tile shows it needs it, a
    phrase saying what was adapted ("" when nothing), and the number of classes it predicts.
    ``key`` names the logits in a dict output (the sidecar's ``"output"``)."""
    side = tile or PROBE_TILE
    with torch.inference_mode():
        output = module(torch.zeros(1, bands, side, side))
    where = _key(output, key)
    logits = output if where is None else output[where]
    coarser = tuple(logits.shape[-2:]) != (side, side)
    if where is None and not coarser:
        return module, "", logits.shape[1]
    parts = [] if where is None else [f"output[{where!r}]"]
    if coarser:
        parts.append(f"upsampled from 1/{side // logits.shape[-1]} resolution")
    return DenseLogits(module, where), ", ".join(parts), logits.shape[1]
