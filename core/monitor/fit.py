"""Fitting a drift baseline: :func:`fit_baseline` and the calibration of its thresholds.

:func:`fit_baseline` profiles one or several baseline scenes: per band (and NDVI where the
bands allow) a fixed-edge histogram, a quantile sketch, mean and std; the predicted share of
each class when a model is given; and per tile of the scene grid a histogram, so that drift
can be localised.

Thresholds are effect sizes calibrated on the baseline itself, never textbook cut-offs:

- With several baseline scenes, each scene is checked against the profile of the *others*
  (leave-one-out); a metric's threshold is ``CALIBRATION_MARGIN`` times the largest
  leave-one-out value, and never below :data:`MIN_THRESHOLDS`. A tile's threshold is set the
  same way from the leave-one-out distances of all tiles of all baseline scenes.
- With one baseline scene there is no spread to measure (a sub-block of a scene is not a
  scene), so :data:`DEFAULT_THRESHOLDS` apply.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr

from seamline.core.data.io import band_names
from seamline.core.errors import BandMismatchError, InvalidArgumentError
from seamline.core.monitor.baseline import (
    FEATURE_METRICS,
    HIST_BINS,
    PREDICTION,
    QUANTILE_LEVELS,
    Baseline,
    FeatureProfile,
    TileReference,
    grid_key,
)
from seamline.core.monitor.distances import feature_metrics, jensen_shannon, tile_distance
from seamline.core.monitor.sampling import Part, class_counts, scene_parts
from seamline.core.prepare.indices import available_indices

__all__ = [
    "fit_baseline",
    "DEFAULT_THRESHOLDS",
    "MIN_THRESHOLDS",
    "CALIBRATION_MARGIN",
    "DEFAULT_TILE_SIZE",
]

INDEX_FEATURES = ("ndvi",)
"""Spectral indices profiled as extra features when the bands allow (by band name)."""

DEFAULT_THRESHOLDS: dict[str, float] = {"psi": 0.06, "wasserstein": 0.25, "ks": 0.10, "js": 0.01}
"""Thresholds for a one-scene baseline. PSI, Wasserstein (in std) and KS are what a shift of
a quarter of a standard deviation does to a normal distribution (PSI = d^2, W1 = d,
KS = 2 Phi(d/2) - 1; Cohen's "small" effect is 0.2); JS 0.01 (bits) is about 7 % of the area
moving between two classes of 20 % share. Also the default tile threshold (Wasserstein)."""

MIN_THRESHOLDS: dict[str, float] = {"psi": 0.005, "wasserstein": 0.02, "ks": 0.02, "js": 0.001}
"""Floors of calibrated thresholds: baseline scenes that agree almost exactly must not turn
rounding noise into alarms."""

CALIBRATION_MARGIN = 1.5
"""Calibrated threshold = margin x the largest leave-one-out value of the baseline scenes."""

DEFAULT_TILE_SIZE = 32
"""Drift map cell, in scene pixels (320 m at Sentinel-2's 10 m)."""


# --------------------------------------------------------------------------- fitting


def _calibrate(loo: Iterable[float], metric: str) -> float:
    """Margin x the largest leave-one-out value (NaN ignored), never below the floor."""
    values = np.asarray(list(loo), dtype=np.float64)
    largest = float(np.max(values[np.isfinite(values)], initial=0.0))
    return max(MIN_THRESHOLDS[metric], CALIBRATION_MARGIN * largest)


def _profile(name: str, edges: np.ndarray, parts: list[Part]) -> FeatureProfile:
    """The pooled profile of one feature over some scenes' parts."""
    sample = np.concatenate([p.sample for p in parts])
    counts = np.sum([p.counts for p in parts], axis=0)
    return FeatureProfile(
        name=name,
        edges=edges,
        hist=counts / counts.sum(),
        quantiles=np.quantile(sample, QUANTILE_LEVELS),
        mean=float(sample.mean()),
        std=float(sample.std()),
        count=int(counts.sum()),
    )


def fit_baseline(
    scenes: xr.DataArray | Iterable[xr.DataArray],
    model: Any = None,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    trust_model: bool = False,
) -> Baseline:
    """Fit a drift baseline on one or several scenes of one sensor (bands matched by name).

    Parameters
    ----------
    scenes
        ``(band, y, x)`` scenes with the same band names; nodata pixels are excluded. NDVI is
        profiled too when the bands include ``red`` and ``nir`` (or their Sentinel-2 codes).
    model
        Optional model (``"demo"``, a path, or a
        :class:`seamline.core.models.modelio.SegmentationModel`): the predicted share of each class
        is profiled, and :func:`check` compares it.
    tile_size
        Drift map cell in pixels (default :data:`DEFAULT_TILE_SIZE`). Tile histograms are kept
        when all scenes share one grid (CRS, transform, shape), as for a monitored site.

    Thresholds are calibrated leave-one-out over the scenes (two or more), else
    :data:`DEFAULT_THRESHOLDS`; see the module docstring.
    """
    scenes = [scenes] if isinstance(scenes, xr.DataArray) else list(scenes)
    if not scenes:
        raise InvalidArgumentError("fit_baseline needs at least one scene.")
    if not isinstance(tile_size, int) or tile_size < 1:
        raise InvalidArgumentError(f"tile_size must be a positive integer, got {tile_size!r}.")
    bands = band_names(scenes[0])
    for scene in scenes[1:]:
        if band_names(scene) != bands:
            raise BandMismatchError(
                f"Baseline scenes have different bands ({list(bands)} vs "
                f"{list(band_names(scene))}): fit a baseline on scenes of one sensor."
            )
    indices = tuple(i for i in INDEX_FEATURES
                    if i not in bands and i in available_indices(scenes[0]))  # fmt: skip
    grids = {grid_key(s) for s in scenes}
    tiled = tile_size if len(grids) == 1 else None

    # Pass 1: samples give the pooled equal-frequency bin edges; pass 2: histograms.
    first = [scene_parts(s, bands, indices) for s in scenes]
    edges = {
        name: np.quantile(np.concatenate([p[name].sample for p in first]),
                          np.linspace(0, 1, HIST_BINS + 1))
        for name in (*bands, *indices)
    }  # fmt: skip
    parts = [scene_parts(s, bands, indices, edges, tiled) for s in scenes]
    names = (*bands, *indices)
    features = tuple(_profile(n, edges[n], [p[n] for p in parts]) for n in names)

    counts = predictions = None
    classes: tuple[str, ...] = ()
    if model is not None:
        from seamline.core.models.modelio import load_model

        loaded = load_model(model, trust_model=trust_model)
        classes = loaded.classes
        predictions = np.array([class_counts(loaded, s)[0] for s in scenes], dtype=np.float64)
        counts = predictions.sum(axis=0)

    tile_ref = None
    if len(scenes) == 1:
        calibration = "default"
        thresholds = {n: {m: DEFAULT_THRESHOLDS[m] for m in FEATURE_METRICS} for n in names}
        if classes:
            thresholds[PREDICTION] = {"js": DEFAULT_THRESHOLDS["js"]}
        tile_thresholds = {n: DEFAULT_THRESHOLDS["wasserstein"] for n in names}
    else:
        calibration = "leave-one-out"
        thresholds, tile_thresholds = _leave_one_out(parts, edges, features, predictions, tiled)
    if tiled is not None:
        shape, transform, crs = grids.pop()
        tile_ref = TileReference(
            size=tile_size,
            shape=shape,
            transform=transform,
            crs=crs,
            counts={n: np.sum([p[n].tiles for p in parts], axis=0) for n in names},
            thresholds=tile_thresholds,
        )
    return Baseline(
        bands=bands,
        indices=indices,
        features=features,
        thresholds=thresholds,
        scenes=len(scenes),
        calibration=calibration,
        classes=classes,
        class_shares=tuple((counts / counts.sum()).tolist()) if counts is not None else (),
        model=None
        if model is None
        else str(model if isinstance(model, str | os.PathLike) else loaded.name),  # fmt: skip
        tiles=tile_ref,
    )


def _leave_one_out(
    parts: list[dict[str, Part]],
    edges: dict[str, np.ndarray],
    features: tuple[FeatureProfile, ...],
    predictions: np.ndarray | None,
    tile_size: int | None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Thresholds from each baseline scene checked against the profile of the others."""
    thresholds: dict[str, dict[str, float]] = {}
    tile_thresholds: dict[str, float] = {}
    for feature in features:
        name = feature.name
        loo = [
            feature_metrics(p[name], _profile(name, edges[name], [q[name] for q in parts
                                                                   if q is not p]))
            for p in parts
        ]  # fmt: skip
        thresholds[name] = {m: _calibrate([v[m] for v in loo], m) for m in FEATURE_METRICS}
        if tile_size is not None:
            total = np.sum([p[name].tiles for p in parts], axis=0)
            distances = np.concatenate([
                tile_distance(p[name].tiles, total - p[name].tiles, edges[name], tile_size**2)
                for p in parts
            ]) / feature.scale  # fmt: skip
            tile_thresholds[name] = _calibrate(distances, "wasserstein")
    if predictions is not None:
        total = predictions.sum(axis=0)
        loo = [jensen_shannon(p / p.sum(), (total - p) / (total - p).sum()) for p in predictions]
        thresholds[PREDICTION] = {"js": _calibrate(loo, "js")}
    return thresholds, tile_thresholds
