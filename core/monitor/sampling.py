"""What one scene contributes to a drift profile or check: thinned samples and histograms.

Per band (by name) and index, :func:`scene_parts` keeps the valid values on a regular grid
(for the quantile sketch and the KS statistic) and, given the baseline's bin edges, the
histogram of all valid pixels, also per tile of the drift map. Everything is vectorised
numpy (histograms by :func:`histogram_bins` + ``bincount``); loops run over bands and bin
edges only.
:func:`class_counts` gives a model's predicted class counts on a scene.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from seamline.core.data.io import band_names, valid_mask
from seamline.core.errors import NoDataError
from seamline.core.monitor.baseline import HIST_BINS
from seamline.core.prepare.bandstats import band_order
from seamline.core.prepare.indices import index_bands, normalized_difference

__all__ = [
    "Part",
    "feature_bands",
    "feature_rows",
    "histogram_bins",
    "make_part",
    "thin_stride",
    "tile_ids",
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


def histogram_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The histogram bin of each (finite) value for the bin ``edges``: how many inner edges
    lie at or below it, ``np.searchsorted(edges[1:-1], values, side="right")`` exactly, as
    uint8.

    Written by hand because a binary search per pixel is branchy and scalar (40 ms per
    448 x 4096 strip here); one SIMD comparison per inner edge is ~10x faster. A float32
    value is compared with each float64 edge rounded up to float32 (the smallest float32 at
    or above it), which orders every float32 value as the float64 edge does."""
    inner = np.asarray(edges, dtype=np.float64)[1:-1]
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    elif values.dtype == np.float32:
        rounded = inner.astype(np.float32)
        inner = np.where(rounded < inner, np.nextafter(rounded, np.float32(np.inf)), rounded)
    bins = np.zeros(values.shape, dtype=np.uint8)  # HIST_BINS < 256
    above = np.empty(values.shape, dtype=bool)
    for edge in inner.astype(values.dtype, copy=False):
        np.greater_equal(values, edge, out=above)
        np.add(bins, above.view(np.uint8), out=bins)
    return bins


def thin_stride(count: int, max_samples: int, min_stride: int = 1) -> int:
    """The grid stride :func:`thin` uses for ``count`` finite values."""
    return max(min_stride, math.ceil(math.sqrt(count / max_samples)))


def thin(values: np.ndarray, max_samples: int, min_stride: int = 1) -> np.ndarray:
    """The finite values of a ``(y, x)`` array on a regular grid: at most ~``max_samples``."""
    stride = thin_stride(int(np.count_nonzero(np.isfinite(values))), max_samples, min_stride)
    thinned = values[::stride, ::stride]
    return thinned[np.isfinite(thinned)].astype(np.float64)


def feature_rows(
    raw: np.ndarray,
    valid: np.ndarray,
    bands: tuple[str, ...],
    order: list[int],
    index_pairs: dict[str, tuple[int, int]],
) -> Iterator[tuple[str, np.ndarray]]:
    """Each band and index of raw ``(bands, y, x)`` values (a scene, or some of its rows) as
    float32 ``(y, x)``, NaN where not ``valid``: ``order`` holds the raw band of each of
    ``bands``, ``index_pairs`` the raw bands of each index's difference."""
    for name, b in zip(bands, order, strict=True):  # per band: temporaries stay (y, x)-sized
        band = raw[b].astype(np.float32)
        band[~valid] = np.nan
        yield name, band
    for index, (a, b) in index_pairs.items():
        yield index, normalized_difference(raw[a], raw[b], valid)


def feature_bands(
    scene: xr.DataArray, bands: tuple[str, ...], indices: tuple[str, ...]
) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """The scene bands of the baseline's ``bands`` and of each of its ``indices``' pair."""
    names = band_names(scene)
    return (band_order(scene, bands, by="the drift baseline"),
            {index: index_bands(names, index) for index in indices})  # fmt: skip


def _feature_arrays(
    scene: xr.DataArray, bands: tuple[str, ...], indices: tuple[str, ...]
) -> Iterator[tuple[str, np.ndarray]]:
    """Each band (by name) and index of a scene as float32 ``(y, x)``, NaN where invalid."""
    order, pairs = feature_bands(scene, bands, indices)
    valid = valid_mask(scene)
    if not valid.any():
        raise NoDataError("The scene has no valid pixels: check its nodata value.")
    yield from feature_rows(np.asarray(scene.values), valid, bands, order, pairs)


def tile_ids(shape: tuple[int, int], size: int,
             rows: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
    """Row-major tile index of every pixel (of ``rows``, default all) for ``size``-pixel
    tiles, and the tile count."""
    n_rows, cols = math.ceil(shape[0] / size), math.ceil(shape[1] / size)
    first, stop = rows or (0, shape[0])
    ids = (np.arange(first, stop) // size)[:, None] * cols + np.arange(shape[1]) // size
    return ids, n_rows * cols


def scene_parts(
    scene: xr.DataArray,
    bands: tuple[str, ...],
    indices: tuple[str, ...],
    edges: dict[str, np.ndarray] | None = None,
    tile_size: int | None = None,
) -> dict[str, Part]:
    """Samples of every feature; with ``edges`` also its histogram (and per tile)."""
    ids = n_tiles = None
    if edges is not None and tile_size is not None:
        ids, n_tiles = tile_ids(scene.shape[-2:], tile_size)
    parts = {}
    for name, values in _feature_arrays(scene, bands, indices):
        histogram = None
        if edges is not None:
            finite = np.isfinite(values)
            bins = histogram_bins(values[finite], edges[name])
            flat = bins if ids is None else ids[finite] * HIST_BINS + bins
            histogram = np.bincount(flat, minlength=(n_tiles or 1) * HIST_BINS)
        parts[name] = make_part(name, thin(values, PROFILE_SAMPLES),
                                thin(values, KS_SAMPLE, KS_MIN_STRIDE), histogram,
                                n_tiles)  # fmt: skip
    return parts


def make_part(name: str, sample: np.ndarray, ks_sample: np.ndarray,
              histogram: np.ndarray | None, n_tiles: int | None) -> Part:  # fmt: skip
    """Feature ``name``'s :class:`Part` from its thinned samples and its histogram (over all
    valid pixels, or ``n_tiles`` x ``HIST_BINS`` per tile); one sentence if it has no value."""
    if sample.size == 0:
        raise NoDataError(f"The scene has no valid {name} values: check its bands and nodata.")
    part = Part(sample, ks_sample if ks_sample.size else sample)  # KS grid too sparse: all
    if histogram is not None and n_tiles is None:
        part.counts = histogram
    elif histogram is not None:
        part.tiles = histogram.reshape(n_tiles, HIST_BINS)
        part.counts = part.tiles.sum(axis=0)
    return part


def class_counts(model: Any, scene: xr.DataArray) -> tuple[np.ndarray, xr.DataArray]:
    """Pixel count per predicted class, and the class-id prediction itself."""
    from seamline.core.predict.blocks import CLASS_NODATA
    from seamline.core.predict.scene import predict_scene

    prediction = predict_scene(model, scene)
    ids = prediction.values
    counts = np.bincount(ids[ids != CLASS_NODATA], minlength=len(model.classes))
    return counts[: len(model.classes)], prediction
