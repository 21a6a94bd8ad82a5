"""Raw scene values -> the model's input, applied tile by tile as tiles are copied.

:class:`ModelInput` holds what turns a scene's raw values into what the model was trained on:
its bands in its order, ``(x - offset) / scale`` in float32 with the baseline's statistics,
NaN where the pixel is nodata. The tile-row stream (:mod:`seamline.core.predict.stream`)
applies it to each tile as it copies the tile into a batch, so strips stay in the raster's
own dtype (a uint16 strip is half a float32 one) and every path, in memory or from a file,
computes the same floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from seamline.core.errors import BandMismatchError
from seamline.core.models.modelio import SegmentationModel, check_bands

__all__ = ["ModelInput"]

_NO_CUDA_INDEX = (torch.uint16, torch.uint32)
"""Unsigned dtypes CUDA has no indexing kernel for (torch 2.11: "index_cuda" not implemented
for 'UInt16')."""


@dataclass(frozen=True)
class ModelInput:
    """The model's input from ``(scene bands, y, x)`` raw values (see the module docstring).

    ``offset``/``scale`` None: the values are taken as they are (a scene already prepared
    with the model's statistics, or a model without statistics)."""

    order: tuple[int, ...]
    offset: tuple[float, ...] | None
    scale: tuple[float, ...] | None
    nodata: float | None

    @classmethod
    def for_scene(cls, model: SegmentationModel, scene: xr.DataArray) -> ModelInput:
        """How ``scene``'s values become ``model``'s input; one sentence if a prepared scene
        was normalised with other statistics than the model's."""
        order = tuple(check_bands(model, scene))
        nodata = scene.rio.nodata
        nodata = None if nodata is None or np.isnan(nodata) else float(nodata)
        if scene.attrs.get("normalisation"):  # already prepared: with the model's statistics?
            used = scene.attrs.get("band_stats")
            if model.stats is not None and used != model.stats.fingerprint():
                raise BandMismatchError(
                    f"The scene was normalised with other band statistics ({used}) than model "
                    f"{model.name!r} was trained with ({model.stats.fingerprint()}): prepare it"
                    " with `--stats` set to the model (e.g. --stats demo), or pass the raw "
                    "scene."
                )
            return cls(order, None, None, nodata)
        if model.stats is None:
            return cls(order, None, None, nodata)
        offset, scale = model.stats.offset_scale("zscore")
        return cls(order, tuple(offset.tolist()), tuple(scale.tolist()), nodata)

    def valid(self, values: torch.Tensor) -> torch.Tensor:
        """Where ``(scene bands, ...)`` raw values hold data: some band finite and not
        nodata (GDAL's dataset mask, as :func:`~seamline.core.data.io.valid_mask`)."""
        valid = torch.zeros(values.shape[1:], dtype=torch.bool, device=values.device)
        for band in values:  # per band: temporaries stay (y, x)-sized
            ok = torch.isfinite(band) if band.is_floating_point() else torch.ones_like(valid)
            if self.nodata is not None:
                ok &= band != self.nodata
            valid |= ok
        return valid

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``(scene bands, ...)`` raw values -> ``(model bands, ...)`` float32 input, NaN
        where there is no data (:meth:`valid`)."""
        if values.is_cuda and values.dtype in _NO_CUDA_INDEX:  # CUDA indexes them not
            values = values.to(torch.int64)  # holds every value of theirs exactly
        valid = self.valid(values)
        out = values[list(self.order)].to(torch.float32)
        if self.offset is not None:  # float32 arithmetic, as numpy's normalise does
            shape = (-1, *([1] * (out.ndim - 1)))
            out -= torch.tensor(self.offset, dtype=torch.float32, device=out.device).view(shape)
            out /= torch.tensor(self.scale, dtype=torch.float32, device=out.device).view(shape)
        return out.masked_fill_(~valid, float("nan"))
