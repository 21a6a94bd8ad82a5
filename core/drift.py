"""The ``monitor`` stage: drift of inputs and predictions against a baseline profile.

:func:`fit_baseline` profiles one or several baseline scenes: per band (and NDVI where the
bands allow) a fixed-edge histogram, a quantile sketch, mean and std; the predicted share of
each class when a model is given; and per tile of the scene grid a histogram, so that drift
can be localised. :func:`check` compares a new scene with that profile and returns a
:class:`DriftResult`: per feature PSI, Wasserstein distance and KS statistic, the
Jensen-Shannon shift of the predicted class shares, accuracy/mIoU where labels exist, an
overall score, a drift flag and a georeferenced per-tile drift map. :func:`assess_refit`
is the loop back to ``prepare``: it quantile-matches a scene to the baseline (undoing a
sensor gain/offset step) and reports the score and the prediction agreement before and after.

Thresholds are effect sizes calibrated on the baseline itself, never textbook cut-offs:

- With several baseline scenes, each scene is checked against the profile of the *others*
  (leave-one-out); a metric's threshold is ``CALIBRATION_MARGIN`` times the largest
  leave-one-out value, and never below :data:`MIN_THRESHOLDS`. A tile's threshold is set the
  same way from the leave-one-out distances of all tiles of all baseline scenes.
- With one baseline scene there is no spread to measure (a sub-block of a scene is not a
  scene), so :data:`DEFAULT_THRESHOLDS` apply.

Every metric is reported with the threshold applied to it. The overall ``score`` is the
largest ``value / threshold`` over all metrics; ``drift`` is ``score > 1``. Each tile of the
drift map holds the same ratio for that tile's Wasserstein distance.

Everything is vectorised numpy (histograms by ``searchsorted`` + ``bincount``, quantile
matching by ``np.interp``); loops run over bands and baseline scenes only. The distances are
computed from the stored sketches, which :mod:`scipy.stats` cannot take as input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from core.bandstats import band_order
from core.errors import (
    BandMismatchError,
    BaselineError,
    InputFileError,
    InvalidArgumentError,
    NoDataError,
)
from core.indices import available_indices, spectral_index
from core.io import atomic_path, band_names, valid_mask
from core.metrics import confusion_matrix, iou_per_class

__all__ = [
    "Baseline",
    "FeatureProfile",
    "TileReference",
    "MetricResult",
    "DriftResult",
    "RefitReport",
    "fit_baseline",
    "check",
    "refit_normalisation",
    "assess_refit",
    "DEFAULT_THRESHOLDS",
    "MIN_THRESHOLDS",
    "CALIBRATION_MARGIN",
    "DEFAULT_TILE_SIZE",
    "SCORE_THRESHOLD",
    "FEATURE_METRICS",
    "PREDICTION",
]

BASELINE_FORMAT = "seamline-drift-baseline"
BASELINE_VERSION = 1

FEATURE_METRICS = ("psi", "wasserstein", "ks")
"""Metrics computed per band and index. ``wasserstein`` is in baseline standard deviations."""

PREDICTION = "prediction"
"""Feature name of the predicted class shares; its metric is ``js``."""

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

SCORE_THRESHOLD = 1.0
"""The score is in units of the calibrated thresholds: ``drift`` is ``score > 1``."""

DEFAULT_TILE_SIZE = 32
"""Drift map cell, in scene pixels (320 m at Sentinel-2's 10 m)."""

HIST_BINS = 20
"""Fixed-edge histogram bins per feature, equal-frequency on the pooled baseline."""

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
"""Levels of the quantile sketch (0 = minimum, 1 = maximum)."""

PROFILE_SAMPLES = 250_000
"""Quantiles are computed on at most this many valid pixels per scene, on a regular grid."""

KS_SAMPLE = 10_000
KS_MIN_STRIDE = 4
"""The KS statistic uses at most ``KS_SAMPLE`` pixels on a regular grid at least
``KS_MIN_STRIDE`` pixels apart: neighbouring pixels are not independent samples. Only the
statistic is reported, never a p-value."""

MIN_TILE_VALID = 0.25
"""A tile with valid pixels under this share of a full tile gets no drift value (NaN)."""

_PSI_FLOOR = 1e-4  # bin share floor: an empty bin must not make PSI infinite


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True, eq=False)
class FeatureProfile:
    """The baseline distribution of one band or index (valid pixels only).

    ``edges`` are ``HIST_BINS + 1`` histogram edges (the outer ones are the baseline's minimum
    and maximum; values beyond fall in the outer bins), ``hist`` the share per bin,
    ``quantiles`` the values at :data:`QUANTILE_LEVELS`.
    """

    name: str
    edges: np.ndarray
    hist: np.ndarray
    quantiles: np.ndarray
    mean: float
    std: float
    count: int

    @property
    def scale(self) -> float:
        """The unit of the standardised Wasserstein distance (std, or 1 for a constant)."""
        return self.std if self.std > 0 else 1.0

    def to_dict(self) -> dict:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "edges": self.edges.tolist(),
            "hist": self.hist.tolist(),
            "quantiles": self.quantiles.tolist(),
            "mean": self.mean,
            "std": self.std,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureProfile:
        """Build from :meth:`to_dict` output; raises ``ValueError`` when malformed."""
        profile = cls(
            name=str(data["name"]),
            edges=np.asarray(data["edges"], dtype=np.float64),
            hist=np.asarray(data["hist"], dtype=np.float64),
            quantiles=np.asarray(data["quantiles"], dtype=np.float64),
            mean=float(data["mean"]),
            std=float(data["std"]),
            count=int(data["count"]),
        )
        if profile.edges.shape != (HIST_BINS + 1,) or profile.hist.shape != (HIST_BINS,):
            raise ValueError(f"feature {profile.name!r} has a histogram of the wrong size")
        if profile.quantiles.shape != QUANTILE_LEVELS.shape:
            raise ValueError(f"feature {profile.name!r} has a quantile sketch of the wrong size")
        return profile


@dataclass(frozen=True, eq=False)
class TileReference:
    """Per-tile histograms of the baseline on its scene grid, for the drift map.

    ``counts[feature]`` is ``(tiles, HIST_BINS)`` pixel counts summed over the baseline
    scenes, tiles in row-major order over a grid of ``size``-pixel cells; ``thresholds`` the
    calibrated Wasserstein threshold per feature (in baseline standard deviations).
    """

    size: int
    shape: tuple[int, int]
    transform: tuple[float, ...]
    crs: str
    counts: dict[str, np.ndarray]
    thresholds: dict[str, float]

    def matches(self, scene: xr.DataArray) -> bool:
        """Whether ``scene`` lies on the grid the tile histograms were fitted on."""
        return _grid_key(scene) == (self.shape, self.transform, self.crs)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary."""
        return {
            "size": self.size,
            "shape": list(self.shape),
            "transform": list(self.transform),
            "crs": self.crs,
            "thresholds": self.thresholds,
            "counts": {name: c.tolist() for name, c in self.counts.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> TileReference:
        """Build from :meth:`to_dict` output; raises ``ValueError`` when malformed."""
        size = int(data["size"])
        shape = (int(data["shape"][0]), int(data["shape"][1]))
        tiles = math.ceil(shape[0] / size) * math.ceil(shape[1] / size)
        counts = {k: np.asarray(v, dtype=np.int64) for k, v in data["counts"].items()}
        if any(c.shape != (tiles, HIST_BINS) for c in counts.values()):
            raise ValueError("the tile histograms do not match the tile grid")
        return cls(
            size=size,
            shape=shape,
            transform=tuple(float(v) for v in data["transform"]),
            crs=str(data["crs"]),
            counts=counts,
            thresholds={k: float(v) for k, v in data["thresholds"].items()},
        )


@dataclass(frozen=True, eq=False)
class Baseline:
    """A fitted drift baseline: feature profiles, class shares, tile histograms, thresholds.

    ``thresholds[feature][metric]`` is the threshold :func:`check` applies; ``calibration`` says
    how it was set (``"leave-one-out"`` over ``scenes`` scenes, or ``"default"``).
    """

    bands: tuple[str, ...]
    indices: tuple[str, ...]
    features: tuple[FeatureProfile, ...]
    thresholds: dict[str, dict[str, float]]
    scenes: int
    calibration: str
    classes: tuple[str, ...] = ()
    class_shares: tuple[float, ...] = ()
    model: str | None = None
    tiles: TileReference | None = None
    version: int = BASELINE_VERSION

    def feature(self, name: str) -> FeatureProfile:
        """The profile of one band or index."""
        return next(f for f in self.features if f.name == name)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (the file format of :meth:`save`)."""
        return {
            "format": BASELINE_FORMAT,
            "version": self.version,
            "bands": list(self.bands),
            "indices": list(self.indices),
            "scenes": self.scenes,
            "calibration": self.calibration,
            "thresholds": self.thresholds,
            "classes": list(self.classes),
            "class_shares": list(self.class_shares),
            "model": self.model,
            "features": [f.to_dict() for f in self.features],
            "tiles": self.tiles.to_dict() if self.tiles else None,
        }

    def fingerprint(self) -> str:
        """A short hash of the baseline, recorded with every check made against it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically (no partial file on failure)."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict()))
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict) -> Baseline:
        """Build from :meth:`to_dict` output; raises ``ValueError``/``KeyError`` when malformed."""
        features = tuple(FeatureProfile.from_dict(f) for f in data["features"])
        names = [f.name for f in features]
        if names != [*data["bands"], *data["indices"]]:
            raise ValueError("its features do not match its bands and indices")
        thresholds = {
            str(f): {str(m): float(v) for m, v in t.items()} for f, t in data["thresholds"].items()
        }
        if any(set(FEATURE_METRICS) - set(thresholds.get(n, {})) for n in names):
            raise ValueError("it lacks thresholds for some features")
        classes = data.get("classes") or []
        if classes and (len(data["class_shares"]) != len(classes) or PREDICTION not in thresholds):
            raise ValueError("its class shares or their threshold do not match its classes")
        return cls(
            bands=tuple(str(b) for b in data["bands"]),
            indices=tuple(str(i) for i in data["indices"]),
            features=features,
            thresholds=thresholds,
            scenes=int(data["scenes"]),
            calibration=str(data["calibration"]),
            classes=tuple(str(c) for c in data.get("classes") or ()),
            class_shares=tuple(float(s) for s in data.get("class_shares") or ()),
            model=data.get("model"),
            tiles=TileReference.from_dict(data["tiles"]) if data.get("tiles") else None,
            version=int(data["version"]),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baseline:
        """Read a baseline written by :meth:`save`; one sentence if it is missing or invalid."""
        path = Path(path)
        if not path.is_file():
            raise InputFileError(
                f"Drift baseline file {str(path)!r} does not exist: create it with "
                "`seamline drift baseline`."
            )
        redo = "re-create it with `seamline drift baseline`"
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BaselineError(
                f"Drift baseline file {str(path)!r} is not valid JSON ({exc}): {redo}."
            ) from None
        if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
            raise BaselineError(
                f"File {str(path)!r} is not a Seamline drift baseline: pass the JSON written "
                "by `seamline drift baseline`."
            )
        if data.get("version") != BASELINE_VERSION:
            raise BaselineError(
                f"Drift baseline file {str(path)!r} has format version {data.get('version')!r} "
                f"but this Seamline reads version {BASELINE_VERSION}: {redo}."
            )
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BaselineError(
                f"Drift baseline file {str(path)!r} is incomplete or damaged ({exc}): {redo}."
            ) from None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MetricResult:
    """One figure of a check, with the threshold applied to it (``None``: informative only)."""

    feature: str
    metric: str
    value: float
    threshold: float | None = None

    @property
    def ratio(self) -> float | None:
        """``value / threshold``: above 1 means drift."""
        return None if self.threshold is None else self.value / self.threshold

    @property
    def drift(self) -> bool | None:
        """Whether this metric is beyond its threshold."""
        return None if self.threshold is None else bool(self.value > self.threshold)


@dataclass(frozen=True, eq=False)
class DriftResult:
    """The outcome of :func:`check` for one scene.

    ``score`` is the largest ``value / threshold`` over :attr:`metrics` (``driver`` names
    which), ``drift`` is ``score > threshold`` with ``threshold`` = 1. ``drift_map`` is a
    ``(y, x)`` float32 DataArray on the tile grid (CRS and transform through rioxarray) of
    each tile's ratio, NaN where a tile has too few valid pixels; ``None`` when the scene is not
    on the baseline's grid. ``prediction`` is the model's class-id raster when a model ran.
    """

    metrics: tuple[MetricResult, ...]
    score: float
    drift: bool
    driver: str
    baseline: str
    calibration: str
    threshold: float = SCORE_THRESHOLD
    class_shares: dict[str, float] | None = None
    drift_map: xr.DataArray | None = None
    prediction: xr.DataArray | None = None

    def metric(self, feature: str, metric: str) -> MetricResult:
        """One metric by feature and name."""
        return next(m for m in self.metrics if m.feature == feature and m.metric == metric)

    @property
    def drifted_tiles(self) -> float | None:
        """Share of the scored map tiles above their threshold."""
        if self.drift_map is None:
            return None
        values = self.drift_map.values
        scored = np.isfinite(values)
        return float((values[scored] > SCORE_THRESHOLD).mean()) if scored.any() else 0.0

    def to_dict(self) -> dict:
        """A JSON-ready summary: score, flag, and every metric with its threshold."""
        features: dict[str, dict[str, Any]] = {}
        for m in self.metrics:
            entry: dict[str, Any] = {"value": m.value}
            if m.threshold is not None:
                entry.update(threshold=m.threshold, drift=m.drift)
            features.setdefault(m.feature, {})[m.metric] = entry
        out = {
            "score": self.score,
            "threshold": self.threshold,
            "drift": self.drift,
            "driver": self.driver,
            "calibration": self.calibration,
            "baseline": self.baseline,
            "metrics": features,
        }
        if self.class_shares is not None:
            out["class_shares"] = self.class_shares
        if self.drift_map is not None:
            out["map"] = {
                "tile_size": self.drift_map.attrs["tile_size"],
                "tiles": int(np.isfinite(self.drift_map.values).sum()),
                "drifted_share": self.drifted_tiles,
            }
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """One row per (feature, metric) for the history, the overall score first."""
        rows = [MetricResult("scene", "score", self.score, self.threshold), *self.metrics]
        if self.drift_map is not None:
            rows.append(MetricResult("map", "drifted_share", self.drifted_tiles))
        return [
            {"feature": m.feature, "metric": m.metric, "value": m.value, "threshold": m.threshold}
            for m in rows
        ]


# --------------------------------------------------------------------------- scene parts


@dataclass(eq=False)
class _Part:
    """What one scene contributes for one feature: histograms and thinned samples."""

    sample: np.ndarray  # valid values on a regular grid, <= PROFILE_SAMPLES
    ks_sample: np.ndarray  # valid values at least KS_MIN_STRIDE apart, <= KS_SAMPLE
    counts: np.ndarray | None = None  # (HIST_BINS,) over all valid pixels
    tiles: np.ndarray | None = None  # (tiles, HIST_BINS)


def _thin(values: np.ndarray, max_samples: int, min_stride: int = 1) -> np.ndarray:
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


def _scene_parts(
    scene: xr.DataArray,
    bands: tuple[str, ...],
    indices: tuple[str, ...],
    edges: dict[str, np.ndarray] | None = None,
    tile_size: int | None = None,
) -> dict[str, _Part]:
    """Samples of every feature; with ``edges`` also its histogram (and per tile)."""
    tile_ids = n_tiles = None
    if edges is not None and tile_size is not None:
        tile_ids, n_tiles = _tile_ids(scene.shape[-2:], tile_size)
    parts = {}
    for name, values in _feature_arrays(scene, bands, indices):
        part = _Part(_thin(values, PROFILE_SAMPLES), _thin(values, KS_SAMPLE, KS_MIN_STRIDE))
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


def _profile(name: str, edges: np.ndarray, parts: list[_Part]) -> FeatureProfile:
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


# --------------------------------------------------------------------------- distances


def _psi(hist: np.ndarray, ref: np.ndarray) -> float:
    """Population stability index of two histograms (shares) over the same bins."""
    p, q = np.maximum(hist, _PSI_FLOOR), np.maximum(ref, _PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def _wasserstein(quantiles: np.ndarray, ref: np.ndarray) -> float:
    """W1 distance from two quantile sketches: the integral of ``|Q1(l) - Q2(l)|`` over l."""
    return float(np.trapezoid(np.abs(quantiles - ref), QUANTILE_LEVELS))


def _ks(sample: np.ndarray, ref_quantiles: np.ndarray) -> float:
    """KS statistic of a sample against the CDF of a quantile sketch, at the sketch's knots."""
    ecdf = np.searchsorted(np.sort(sample), ref_quantiles, side="right") / sample.size
    # tied knots (discrete values): the CDF at a value is the highest level that has it
    cdf = QUANTILE_LEVELS[np.searchsorted(ref_quantiles, ref_quantiles, side="right") - 1]
    return float(np.max(np.abs(ecdf - cdf)))


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint)."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return float(kl.sum() / 2)


def _feature_metrics(part: _Part, ref: FeatureProfile) -> dict[str, float]:
    """PSI, standardised W1 and KS of one feature of a scene against a profile."""
    quantiles = np.quantile(part.sample, QUANTILE_LEVELS)
    return {
        "psi": _psi(part.counts / part.counts.sum(), ref.hist),
        "wasserstein": _wasserstein(quantiles, ref.quantiles) / ref.scale,
        "ks": _ks(part.ks_sample, ref.quantiles),
    }


def _tile_distance(
    tiles: np.ndarray, ref_tiles: np.ndarray, edges: np.ndarray, tile_pixels: int
) -> np.ndarray:
    """W1 per tile between two ``(tiles, bins)`` histograms; NaN for a sparse tile.

    The CDFs differ by ``|C1 - C2|`` between neighbouring bin centres: their product with the
    spacing of the centres, summed, is the histogram's Wasserstein distance.
    """
    n, m = tiles.sum(axis=1), ref_tiles.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.cumsum(tiles, axis=1) / n[:, None] - np.cumsum(ref_tiles, axis=1) / m[:, None]
    centres = (edges[:-1] + edges[1:]) / 2
    distance = np.abs(gap[:, :-1]) @ np.diff(centres)
    distance[(n < MIN_TILE_VALID * tile_pixels) | (m == 0)] = np.nan
    return distance


def _class_counts(model: Any, scene: xr.DataArray) -> tuple[np.ndarray, xr.DataArray]:
    """Pixel count per predicted class, and the class-id prediction itself."""
    from core.predict import CLASS_NODATA, predict_scene  # torch only when a model is used

    prediction = predict_scene(model, scene)
    ids = prediction.values
    counts = np.bincount(ids[ids != CLASS_NODATA], minlength=len(model.classes))
    return counts[: len(model.classes)], prediction


def _grid_key(scene: xr.DataArray) -> tuple[tuple[int, int], tuple[float, ...], str]:
    crs = scene.rio.crs
    transform = tuple(round(v, 6) for v in tuple(scene.rio.transform())[:6])
    return (int(scene.shape[-2]), int(scene.shape[-1])), transform, crs.to_wkt() if crs else ""


# --------------------------------------------------------------------------- fitting


def _calibrate(loo: Iterable[float], metric: str) -> float:
    """Margin x the largest leave-one-out value (NaN ignored), never below the floor."""
    values = np.asarray(list(loo), dtype=np.float64)
    largest = float(np.max(values[np.isfinite(values)], initial=0.0))
    return max(MIN_THRESHOLDS[metric], CALIBRATION_MARGIN * largest)


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
        Optional model (``"demo"``, a path, or a :class:`core.modelio.SegmentationModel`):
        the predicted share of each class is profiled, and :func:`check` compares it.
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
    grids = {_grid_key(s) for s in scenes}
    tiled = tile_size if len(grids) == 1 else None

    # Pass 1: samples give the pooled equal-frequency bin edges; pass 2: histograms.
    first = [_scene_parts(s, bands, indices) for s in scenes]
    edges = {
        name: np.quantile(np.concatenate([p[name].sample for p in first]),
                          np.linspace(0, 1, HIST_BINS + 1))
        for name in (*bands, *indices)
    }  # fmt: skip
    parts = [_scene_parts(s, bands, indices, edges, tiled) for s in scenes]
    names = (*bands, *indices)
    features = tuple(_profile(n, edges[n], [p[n] for p in parts]) for n in names)

    counts = predictions = None
    classes: tuple[str, ...] = ()
    if model is not None:
        from core.modelio import load_model

        loaded = load_model(model, trust_model=trust_model)
        classes = loaded.classes
        predictions = np.array([_class_counts(loaded, s)[0] for s in scenes], dtype=np.float64)
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
    parts: list[dict[str, _Part]],
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
            _feature_metrics(p[name], _profile(name, edges[name], [q[name] for q in parts
                                                                   if q is not p]))
            for p in parts
        ]  # fmt: skip
        thresholds[name] = {m: _calibrate([v[m] for v in loo], m) for m in FEATURE_METRICS}
        if tile_size is not None:
            total = np.sum([p[name].tiles for p in parts], axis=0)
            distances = np.concatenate([
                _tile_distance(p[name].tiles, total - p[name].tiles, edges[name], tile_size**2)
                for p in parts
            ]) / feature.scale  # fmt: skip
            tile_thresholds[name] = _calibrate(distances, "wasserstein")
    if predictions is not None:
        total = predictions.sum(axis=0)
        loo = [_js(p / p.sum(), (total - p) / (total - p).sum()) for p in predictions]
        thresholds[PREDICTION] = {"js": _calibrate(loo, "js")}
    return thresholds, tile_thresholds


# --------------------------------------------------------------------------- checking


def _drift_map(ratios: np.ndarray, scene: xr.DataArray, size: int) -> xr.DataArray:
    """Tile ratios as a georeferenced ``(y, x)`` raster of ``size``-pixel cells."""
    rows, cols = math.ceil(scene.shape[-2] / size), math.ceil(scene.shape[-1] / size)
    transform = scene.rio.transform() @ Affine.scale(size)
    out = xr.DataArray(
        ratios.reshape(rows, cols).astype(np.float32),
        dims=("y", "x"),
        coords={
            "y": transform.f + (np.arange(rows) + 0.5) * transform.e,
            "x": transform.c + (np.arange(cols) + 0.5) * transform.a,
        },
        name="drift",
        attrs={"long_name": "drift", "tile_size": size, "threshold": SCORE_THRESHOLD},
    )
    out.rio.write_crs(scene.rio.crs, inplace=True)
    out.rio.write_transform(transform, inplace=True)
    return out.rio.write_nodata(np.nan, encoded=False)


def _label_metrics(
    labels: xr.DataArray, prediction: xr.DataArray, classes: int
) -> list[MetricResult]:
    """Accuracy and mIoU of a prediction against a class raster on the same grid."""
    truth = np.asarray(labels.values).squeeze()
    if truth.shape != prediction.shape:
        raise InvalidArgumentError(
            f"The label raster is {truth.shape[0]} x {truth.shape[-1]} pixels but the scene is "
            f"{prediction.shape[0]} x {prediction.shape[1]}: pass labels on the scene's grid."
        )
    nodata = labels.rio.nodata
    truth = np.where(truth == nodata, 255, truth) if nodata is not None else truth
    cm = confusion_matrix(truth, prediction.values, classes)
    if cm.sum() == 0:
        raise NoDataError("The label raster has no labelled pixel where the scene is valid.")
    return [
        MetricResult("labels", "accuracy", float(np.trace(cm) / cm.sum())),
        MetricResult("labels", "miou", float(np.nanmean(iou_per_class(cm)))),
    ]


def check(
    scene: xr.DataArray,
    baseline: Baseline,
    *,
    model: Any = None,
    labels: xr.DataArray | None = None,
    trust_model: bool = False,
) -> DriftResult:
    """Measure how far a scene's inputs (and predictions) moved from a baseline.

    Parameters
    ----------
    scene
        ``(band, y, x)`` scene with (at least) the baseline's bands, matched by name.
    baseline
        From :func:`fit_baseline` or :meth:`Baseline.load`.
    model
        The model whose predicted class shares the baseline holds: adds the ``prediction``
        ``js`` metric (Jensen-Shannon, bits). Needed for ``labels``.
    labels
        Class ids on the scene's grid (nodata or 255 = unlabelled; sample points are a raster
        that is unlabelled elsewhere): adds ``accuracy`` and ``miou`` (informative, no
        threshold).

    Per band and index: ``psi`` (fixed baseline bins), ``wasserstein`` (W1 in baseline
    standard deviations, from the quantile sketches) and ``ks`` (on a thinned sample). The
    drift map compares each tile with the same tile of the baseline; it is ``None`` when the
    scene is not on the baseline's grid.
    """
    if labels is not None and model is None:
        raise InvalidArgumentError("Accuracy against labels needs a model: pass model= too.")
    tiles = baseline.tiles if baseline.tiles is not None and baseline.tiles.matches(scene) else None
    edges = {f.name: f.edges for f in baseline.features}
    parts = _scene_parts(
        scene, baseline.bands, baseline.indices, edges, tiles.size if tiles else None
    )
    metrics = []
    for feature in baseline.features:
        values = _feature_metrics(parts[feature.name], feature)
        limits = baseline.thresholds[feature.name]
        metrics += [MetricResult(feature.name, m, values[m], limits[m]) for m in FEATURE_METRICS]

    shares = prediction = None
    if model is not None:
        from core.modelio import load_model

        model = load_model(model, trust_model=trust_model)
        if baseline.classes and tuple(model.classes) != baseline.classes:
            raise InvalidArgumentError(
                f"Model {model.name!r} predicts {list(model.classes)} but the baseline was "
                f"fitted with {list(baseline.classes)}: pass the baseline's model."
            )
        counts, prediction = _class_counts(model, scene)
        shares = dict(zip(model.classes, (counts / max(counts.sum(), 1)).tolist(), strict=True))
        if baseline.classes:
            js = _js(counts / counts.sum(), np.asarray(baseline.class_shares))
            metrics.append(
                MetricResult(PREDICTION, "js", js, baseline.thresholds[PREDICTION]["js"])
            )
        if labels is not None:
            metrics += _label_metrics(labels, prediction, len(model.classes))

    drift_map = None
    if tiles is not None:
        ratios = np.full(len(next(iter(tiles.counts.values()))), -np.inf)
        for feature in baseline.features:
            distance = _tile_distance(
                parts[feature.name].tiles, tiles.counts[feature.name], feature.edges,
                tiles.size**2,
            ) / feature.scale  # fmt: skip
            ratios = np.fmax(ratios, distance / tiles.thresholds[feature.name])
        drift_map = _drift_map(np.where(np.isfinite(ratios), ratios, np.nan), scene, tiles.size)

    scored = [m for m in metrics if m.threshold is not None]
    top = max(scored, key=lambda m: m.ratio)
    return DriftResult(
        metrics=tuple(metrics),
        score=float(top.ratio),
        drift=bool(top.ratio > SCORE_THRESHOLD),
        driver=f"{top.feature} {top.metric}",
        baseline=baseline.fingerprint(),
        calibration=baseline.calibration,
        class_shares=shares,
        drift_map=drift_map,
        prediction=prediction,
    )


# --------------------------------------------------------------------------- response


def refit_normalisation(scene: xr.DataArray, baseline: Baseline) -> xr.DataArray:
    """Quantile-match each band of a scene to the baseline (undoes a gain/offset step).

    Every valid value is mapped through the scene's own quantile sketch onto the baseline's
    (``np.interp``): any monotone per-band change (a sensor recalibration ``a * x + b``) is
    undone exactly up to the sketch's resolution. It also erases real change of the band
    distribution (season, land cover), so use it for a sensor step, not to silence drift.
    Returns a copy with the same dtype, bands, grid and nodata.
    """
    order = band_order(scene, baseline.bands, by="the drift baseline")
    valid = valid_mask(scene)
    values = np.asarray(scene.values)
    out = values.copy()
    for name, b in zip(baseline.bands, order, strict=True):
        own = np.quantile(_thin(np.where(valid, values[b], np.nan), PROFILE_SAMPLES),
                          QUANTILE_LEVELS)  # fmt: skip
        matched = np.interp(values[b][valid], own, baseline.feature(name).quantiles)
        if out.dtype.kind in "iu":
            info = np.iinfo(out.dtype)
            matched = np.clip(np.rint(matched), info.min, info.max)
        out[b][valid] = matched
    result = scene.copy(data=out)
    result.attrs["refit_to_baseline"] = baseline.fingerprint()
    return result


@dataclass(frozen=True, eq=False)
class RefitReport:
    """Drift before and after :func:`refit_normalisation`, and the prediction agreement.

    ``agreement_*`` is the share of valid pixels whose predicted class equals the reference
    prediction (e.g. the model's output before a sensor step); ``None`` without one.
    """

    scene: xr.DataArray
    before: DriftResult
    after: DriftResult
    agreement_before: float | None = None
    agreement_after: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            "score_before": self.before.score,
            "score_after": self.after.score,
            "drift_before": self.before.drift,
            "drift_after": self.after.drift,
            "threshold": self.after.threshold,
            "agreement_before": self.agreement_before,
            "agreement_after": self.agreement_after,
        }


def _agreement(prediction: xr.DataArray | None, reference: xr.DataArray | None) -> float | None:
    if prediction is None or reference is None:
        return None
    from core.predict import CLASS_NODATA

    a, b = prediction.values, np.asarray(reference.values).squeeze()
    if a.shape != b.shape:
        raise InvalidArgumentError(
            f"The reference prediction is {b.shape} pixels but the scene is {a.shape}: pass a "
            "reference on the scene's grid."
        )
    both = (a != CLASS_NODATA) & (b != CLASS_NODATA)
    return float((a[both] == b[both]).mean()) if both.any() else None


def assess_refit(
    scene: xr.DataArray,
    baseline: Baseline,
    *,
    model: Any = None,
    reference: xr.DataArray | None = None,
) -> RefitReport:
    """Re-fit the scene's normalisation to the baseline and measure what it restores.

    ``reference`` (class ids on the scene's grid, e.g. the model's output on the last scene
    before a sensor step) gives the prediction agreement before and after; it needs ``model``.
    """
    if reference is not None and model is None:
        raise InvalidArgumentError("Agreement with a reference needs a model: pass model= too.")
    matched = refit_normalisation(scene, baseline)
    before = check(scene, baseline, model=model)
    after = check(matched, baseline, model=model)
    return RefitReport(
        scene=matched,
        before=before,
        after=after,
        agreement_before=_agreement(before.prediction, reference),
        agreement_after=_agreement(after.prediction, reference),
    )
