"""What one scene contributes to a drift profile or check: thinned samples and histograms.

Per band (by name) and index, :func:`scene_parts` keeps the valid values on a regular grid
(for the quantile sketch and the KS statistic) and, given the baseline's bin edges, the
histogram of all valid pixels, also per tile of the drift map. Everything is vectorised
numpy (histograms by ``searchsorted`` + ``bincount``); loops run over bands only.
:func:`class_counts` gives a model's predicted class counts on a scene.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from seamline.core.data.io import valid_mask
from seamline.core.errors import NoDataError
from seamline.core.monitor.baseline import HIST_BINS
from seamline.core.prepare.bandstats import band_order
from seamline.core.prepare.indices import spectral_index

__all__ = [
    "Part",
    "thin",
    "scene_parts",
    "class_counts",
    "PROFILE_SAMPLES",
]

PROFILE_SAMPLES = 250_000
"""Quantiles are computed on at most this many valid pixels per scene, on a regular grid."""

KS_SAMPLE = 10_000
KS_MIN_STRIDE = 4
"""The KS statistic uses at most ``KS_SAMPLE`` pixels on a regular grid at least
``KS_MIN_STRIDE`` pixels apart: neighbouring pixels are not independent samples. Only the
statistic is reported, never a p-value."""


# --------------------------------------------------------------------------- scene parts


@dataclass(eq=False)
class Part:
    """What one scene contributes for one feature: histograms and thinned samples."""

    sample: np.ndarray  # valid values on a regular grid, <= PROFILE_SAMPLES
    ks_sample: np.ndarray  # valid values at least KS_MIN_STRIDE apart, <= KS_SAMPLE
    counts: np.ndarray | None = None  # (HIST_BINS,) over all valid pixels
    tiles: np.ndarray | None = None  # (tiles, HIST_BINS)


def thin(values: np.ndarray, max_samples: int, min_stride: int = 1) -> np.ndarray:
    """The finite values of a ``(y, x)`` array on a regular grid: at most ~``max_samples``."""
    count = int(np.count_nonzero(np.isfinite(values)))
    stride = max(min_stride, math.ceil(math.sqrt(count / max_samples)))
    thinned = values[::stride, ::stride]
    return thinned[np.isfinite(thinned)].astype(np.float64)


def _feature_arrays(
    scene: xr.DataArray, bands: tuple[str, ...], indices: tuple[str, ...]
) -> Iterator[tuple[str, np.ndarray]]:
    """Each band (by name) and index of a scene as float32 ``(y, x)``, NaN where invalid."""
    order = band_order(scene, bands, by="the drift baseline")
    valid = valid_mask(scene)
    if not valid.any():
        raise NoDataError("The scene has no valid pixels: check its nodata value.")
    values = np.asarray(scene.values)
    for name, b in zip(bands, order, strict=True):  # per band: temporaries stay (y, x)-sized
        band = values[b].astype(np.float32)
        band[~valid] = np.nan
        yield name, band
    for index in indices:
        yield index, spectral_index(scene, index).values


def _tile_ids(shape: tuple[int, int], size: int) -> tuple[np.ndarray, int]:
    """Row-major tile index of every pixel for ``size``-pixel tiles, and the tile count."""
    rows, cols = math.ceil(shape[0] / size), math.ceil(shape[1] / size)
    ids = (np.arange(shape[0]) // size)[:, None] * cols + np.arange(shape[1]) // size
    return ids, rows * cols


def scene_parts(
    scene: xr.DataArray,
    bands: tuple[str, ...],
    indices: tuple[str, ...],
    edges: dict[str, np.ndarray] | None = None,
    tile_size: int | None = None,
) -> dict[str, Part]:
    """Samples of every feature; with ``edges`` also its histogram (and per tile)."""
    tile_ids = n_tiles = None
    if edges is not None and tile_size is not None:
        tile_ids, n_tiles = _tile_ids(scene.shape[-2:], tile_size)
    parts = {}
    for name, values in _feature_arrays(scene, bands, indices):
        part = Part(thin(values, PROFILE_SAMPLES), thin(values, KS_SAMPLE, KS_MIN_STRIDE))
        if part.sample.size == 0:
            raise NoDataError(f"The scene has no valid {name} values: check its bands and nodata.")
        if part.ks_sample.size == 0:  # valid pixels too sparse for the thinned grid
            part.ks_sample = part.sample
        if edges is not None:
            finite = np.isfinite(values)
            bins = np.searchsorted(edges[name][1:-1], values[finite], side="right")
            if tile_ids is None:
                part.counts = np.bincount(bins, minlength=HIST_BINS)
            else:
                flat = tile_ids[finite] * HIST_BINS + bins
                part.tiles = np.bincount(flat, minlength=n_tiles * HIST_BINS).reshape(
                    n_tiles, HIST_BINS
                )
                part.counts = part.tiles.sum(axis=0)
        parts[name] = part
    return parts


def class_counts(model: Any, scene: xr.DataArray) -> tuple[np.ndarray, xr.DataArray]:
    """Pixel count per predicted class, and the class-id prediction itself."""
    from seamline.core.predict.blocks import CLASS_NODATA
    from seamline.core.predict.scene import predict_scene

    prediction = predict_scene(model, scene)
    ids = prediction.values
    counts = np.bincount(ids[ids != CLASS_NODATA], minlength=len(model.classes))
    return counts[: len(model.classes)], prediction
