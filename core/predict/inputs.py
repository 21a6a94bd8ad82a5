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

    @property
    def bands(self) -> int:
        """How many bands the model's input has."""
        return len(self.order)

    def valid(self, values: torch.Tensor) -> torch.Tensor:
        """Where ``(scene bands, ...)`` raw values hold data: some band finite and not
        nodata (GDAL's dataset mask, as :func:`~seamline.core.data.io.valid_mask`)."""
        if not values.is_floating_point() and self.nodata is None:
            return torch.ones(values.shape[1:], dtype=torch.bool, device=values.device)
        valid = self._band_valid(values[0])
        for band in values[1:]:  # per band: temporaries stay (y, x)-sized
            valid.logical_or_(self._band_valid(band))
        return valid

    def _band_valid(self, band: torch.Tensor) -> torch.Tensor:
        """Where one band holds data: finite and not nodata."""
        if not band.is_floating_point():
            return band != self.nodata
        ok = band.isfinite()
        return ok if self.nodata is None else ok.logical_and_(band != self.nodata)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``(scene bands, ...)`` raw values -> ``(model bands, ...)`` float32 input, NaN
        where a band holds no data (all bands where no band does: :meth:`valid`)."""
        values = _indexable(values)
        out = torch.empty((self.bands, *values.shape[1:]), dtype=torch.float32,
                          device=values.device)  # fmt: skip
        self._normalise(values, out)
        missing = self._missing(values)  # a pixel without data has no band with data
        return out if missing is None else out.masked_fill_(missing, float("nan"))

    def into(self, values: torch.Tensor, out: torch.Tensor) -> bool:
        """Write the input of a tile's raw values ``(scene bands, t, t)`` into ``out`` (a
        slot of the batch, in its layout) as :meth:`__call__` would give it with NaN made 0
        (the stream feeds nodata as 0, a z-scored band's mean); whether any pixel holds
        data."""
        values = _indexable(values)
        self._normalise(values, out)
        missing = self._missing(values)
        if missing is None:  # the usual tile
            return True
        out.masked_fill_(missing, 0.0)  # a pixel without data has no band with data
        return bool(self.valid(values).any())

    def _missing(self, values: torch.Tensor) -> torch.Tensor | None:
        """Where each model band of ``(scene bands, ...)`` raw values holds no data (NaN,
        infinite or nodata), ``(model bands, ...)``; None where every value holds data. A
        band's nodata value is no data whatever its dtype: an integer band's was fed as a
        value and a float band's NaN as 0 (24 % of the pixels of a block without NIR changed
        class between the two encodings)."""
        if not values.is_floating_point() and self.nodata is None:
            return None
        if self.order != tuple(range(len(values))):
            values = values[list(self.order)]
        # numpy on the CPU: its test and reduction of a strided 512 px tile take 0.17 ms,
        # torch's 0.9 (uint16) to 1.6 ms (float32 isfinite)
        x = values.numpy() if values.device.type == "cpu" else values
        xp = np if isinstance(x, np.ndarray) else torch
        floating = values.is_floating_point()
        missing = ~xp.isfinite(x) if floating else x == self.nodata
        if floating and self.nodata is not None:
            missing |= x == self.nodata
        if not bool(missing.any()):
            return None
        return torch.from_numpy(missing) if xp is np else missing

    def _normalise(self, values: torch.Tensor, out: torch.Tensor) -> None:
        """``out[k] = (values[order[k]] - offset[k]) / scale[k]`` in float32, as numpy's
        normalise computes it (the value made float32 first), in two passes."""
        if values.dtype == torch.float64:  # else torch.sub would subtract in float64
            values = values.to(torch.float32)
        if self.order != tuple(range(len(values))):
            values = values[list(self.order)]
        if self.offset is None:
            out.copy_(values)
            return
        shape = (-1, *([1] * (out.ndim - 1)))
        offset, scale = (torch.tensor(v, dtype=torch.float32, device=out.device).view(shape)
                         for v in (self.offset, self.scale))  # fmt: skip
        torch.sub(values, offset, out=out)  # converts and subtracts in one pass
        out.div_(scale)


def _indexable(values: torch.Tensor) -> torch.Tensor:
    """``values``, widened to int64 on CUDA where it has no kernels for their dtype."""
    if values.is_cuda and values.dtype in _NO_CUDA_INDEX:
        return values.to(torch.int64)  # holds every value of theirs exactly
    return values
