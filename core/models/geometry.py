"""What tiling a model depends on, measured from the model itself when its description does
not state it (issue #18, docs/architecture.md "models/"):

- **alignment**: the smallest shift of the input that shifts the output by the same amount,
  to 1e-5 (a U-Net that downsamples 8x is equivariant to shifts of 8 px only; deep levels
  that barely reach the output may let a smaller shift pass, which is what tiling sees);
- **receptive field**: how far one input pixel reaches into the output, as the impulse
  response of one probe tile (the radius that holds all but ``tolerance`` of it, and the
  radius where it stops altogether);
- **non-local layers**: normalisation over the tile, attention and global pooling make every
  output pixel depend on the whole tile, so no overlap makes tiling exact.

Impulse responses need forward passes only, so the same probe measures eager modules,
``torch.export`` programs and ONNX models alike. Written here because no library measures
this for an arbitrary model (MONAI and segmentation-models-pytorch take the overlap as given).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from seamline.core.diskcache import model_fingerprint, read_json_entry, write_entry

__all__ = ["ModelGeometry", "cached_geometry", "measure_geometry", "non_local_layers"]


ALIGNMENTS = (1, 2, 4, 8, 16, 32, 64)
PHASES = 8
"""Impulses at this many diagonal offsets of the centre: every stride phase up to 8 px."""
NON_LOCAL_MODULES = (
    nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.MultiheadAttention, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
NON_LOCAL_OPS = (
    "group_norm", "layer_norm", "instance_norm", "scaled_dot_product_attention",
    "multi_head_attention", "adaptive_avg_pool", "adaptive_max_pool",
)  # fmt: skip
"""Operator names (in a ``torch.export`` graph) whose output depends on the whole tile."""


@dataclass(frozen=True)
class ModelGeometry:
    """A model's tiling geometry, as measured on a ``probe`` x ``probe`` tile."""

    align: int | None
    """The input shift the output follows; None when no shift up to 64 px reproduces it."""
    receptive_radius: int
    """Pixels around an input pixel holding all but ``tolerance`` of its impulse response."""
    reach: int
    """Pixels around an input pixel where its impulse response stops altogether."""
    non_local: tuple[str, ...]
    """Layers whose output depends on the whole tile (then no overlap tiles exactly)."""
    probe: int
    tolerance: float

    @property
    def bounded(self) -> bool:
        """Whether the impulse response stops inside the probe tile (a local model)."""
        return not self.non_local and self.reach < self.probe // 2 - 1

    def to_dict(self) -> dict:
        """JSON-ready fields (for a cache file or a sidecar)."""
        return asdict(self) | {"non_local": list(self.non_local)}


def non_local_layers(module: nn.Module) -> tuple[str, ...]:
    """Names of the layers of ``module`` that make its output depend on the whole tile:
    module types for an eager model, operator names for a ``torch.export`` graph."""
    found = [
        f"{name or type(module).__name__} ({type(layer).__name__})"
        for name, layer in module.named_modules()
        if isinstance(layer, NON_LOCAL_MODULES)
    ]
    graph = getattr(module, "graph", None)
    if graph is not None:
        targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
        found += sorted(t for t in targets if any(op in t for op in NON_LOCAL_OPS))
    return tuple(found)


def _forward(module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(x).float()


def _alignment(module, x: torch.Tensor, margin: int, atol: float) -> int | None:
    """The smallest shift ``a`` for which ``f(shift(x, a)) == shift(f(x), a)`` away from the
    tile edges (``margin`` px)."""
    size = x.shape[-1] - ALIGNMENTS[-1]
    base = _forward(module, x[..., :size, :size])
    for a in ALIGNMENTS:
        shifted = _forward(module, x[..., a : a + size, a : a + size])
        inner = slice(margin, size - margin - a)
        outer = slice(margin + a, size - margin)
        if torch.allclose(shifted[..., inner, inner], base[..., outer, outer], atol=atol):
            return a
    return None


def _impulse_radii(module, x: torch.Tensor, tolerance: float) -> tuple[int, int]:
    """Radii around an input pixel that hold all but ``tolerance`` of the output change an
    impulse there causes, and that hold all of it: the largest over impulses at the eight
    diagonal phases of the centre (a strided network answers each phase differently)."""
    size = x.shape[-1]
    base = _forward(module, x)
    rows, cols = np.indices(base.shape[-2:])
    effective = reach = 0
    for phase in range(PHASES):
        c = size // 2 + phase
        kicked = x.clone()
        kicked[..., c, c] += 4.0  # four baseline standard deviations on every band
        change = (_forward(module, kicked) - base).abs().sum(dim=(0, 1)).numpy()
        distance = np.maximum(abs(rows - c), abs(cols - c))  # Chebyshev: square tiles
        by_radius = np.bincount(distance.ravel(), weights=change.ravel().astype(np.float64))
        total = by_radius.sum()
        if total == 0:  # the impulse changed nothing (e.g. a saturated or constant model)
            continue
        held = np.cumsum(by_radius) / total
        effective = max(effective, int(np.searchsorted(held, 1.0 - tolerance)))
        reach = max(reach, int(np.nonzero(by_radius > total * 1e-9)[0].max()))
    return effective, reach


def measure_geometry(
    module, bands: int, *, probe: int = 256, tolerance: float = 1e-3, seed: int = 0
) -> ModelGeometry:
    """Measure ``module``'s alignment, receptive field and non-local layers on one random
    ``(1, bands, probe, probe)`` tile (z-scored values, as the model sees them); about 17
    forward passes of that tile.

    ``tolerance`` is the share of an impulse response allowed outside ``receptive_radius``;
    tiling with an overlap that covers that radius is exact to about that share.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, bands, probe + ALIGNMENTS[-1], probe + ALIGNMENTS[-1], generator=generator)
    effective, reach = _impulse_radii(module, x[..., :probe, :probe], tolerance)
    margin = min(reach + 1, probe // 4)
    align = _alignment(module, x, margin, atol=1e-5)
    return ModelGeometry(
        align=align,
        receptive_radius=effective,
        reach=reach,
        non_local=non_local_layers(module) if isinstance(module, nn.Module) else (),
        probe=probe,
        tolerance=tolerance,
    )


def cached_geometry(
    module, bands: int, *, source: bytes | None = None, probe: int = 256
) -> ModelGeometry:
    """:func:`measure_geometry`, measured once per model and machine: kept as JSON in the
    disk cache (:mod:`seamline.core.diskcache`), keyed by the model file's bytes (``source``)
    or its weights."""
    key = f"{model_fingerprint(module, source)}-{bands}-{probe}"
    fields = read_json_entry("geometry", key)
    if fields is not None:
        try:
            return ModelGeometry(**fields | {"non_local": tuple(fields["non_local"])})
        except (ValueError, TypeError, KeyError):  # an entry of another version
            pass
    geometry = measure_geometry(module, bands, probe=probe)
    write_entry("geometry", key, ".json", json.dumps(geometry.to_dict()).encode())
    return geometry
