"""Checking a scene against a drift baseline: :func:`check` and its :class:`DriftResult`.

:func:`check` compares a new scene with a baseline profile and returns a
:class:`DriftResult`: per feature PSI, Wasserstein distance and KS statistic, the
Jensen-Shannon shift of the predicted class shares, accuracy/mIoU where labels exist, an
overall score, a drift flag and a georeferenced per-tile drift map.

Every metric is reported with the threshold applied to it. The overall ``score`` is the
largest ``value / threshold`` over all metrics; ``drift`` is ``score > 1``. Each tile of the
drift map holds the same ratio for that tile's Wasserstein distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from seamline.core.errors import InvalidArgumentError, NoDataError
from seamline.core.metrics import confusion_matrix, iou_per_class
from seamline.core.monitor.baseline import FEATURE_METRICS, PREDICTION, Baseline
from seamline.core.monitor.distances import feature_metrics, jensen_shannon, tile_distance
from seamline.core.monitor.sampling import class_counts, scene_parts

__all__ = [
    "MetricResult",
    "DriftResult",
    "check",
    "check_classes",
    "evaluate",
    "SCORE_THRESHOLD",
]

SCORE_THRESHOLD = 1.0
"""The score is in units of the calibrated thresholds: ``drift`` is ``score > 1``."""


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
    parts = scene_parts(
        scene, baseline.bands, baseline.indices, edges, tiles.size if tiles else None
    )
    counts = prediction = classes = None
    if model is not None:
        from seamline.core.models.modelio import load_model

        model = load_model(model, trust_model=trust_model)
        check_classes(model, baseline)
        counts, prediction = class_counts(model, scene)
        classes = tuple(model.classes)
    return evaluate(parts, baseline, scene, classes=classes, counts=counts,
                    prediction=prediction, labels=labels)  # fmt: skip


def check_classes(model: Any, baseline: Baseline) -> None:
    """One sentence if ``model`` predicts other classes than the baseline's model."""
    if baseline.classes and tuple(model.classes) != baseline.classes:
        raise InvalidArgumentError(
            f"Model {model.name!r} predicts {list(model.classes)} but the baseline was "
            f"fitted with {list(baseline.classes)}: pass the baseline's model."
        )


def evaluate(
    parts: dict,
    baseline: Baseline,
    scene: xr.DataArray,
    *,
    classes: tuple[str, ...] | None = None,
    counts: np.ndarray | None = None,
    prediction: xr.DataArray | None = None,
    labels: xr.DataArray | None = None,
) -> DriftResult:
    """The :class:`DriftResult` of a scene's feature ``parts`` (as
    :func:`~.sampling.scene_parts` gives them, or a streamed
    :class:`~.gather.RowProfile`) and predicted class ``counts`` against ``baseline``;
    ``scene`` places the drift map (its grid only is read)."""
    tiles = baseline.tiles if baseline.tiles is not None and baseline.tiles.matches(scene) else None
    metrics = []
    for feature in baseline.features:
        values = feature_metrics(parts[feature.name], feature)
        limits = baseline.thresholds[feature.name]
        metrics += [MetricResult(feature.name, m, values[m], limits[m]) for m in FEATURE_METRICS]

    shares = None
    if counts is not None:
        shares = dict(zip(classes, (counts / max(counts.sum(), 1)).tolist(), strict=True))
        if baseline.classes:
            js = jensen_shannon(counts / counts.sum(), np.asarray(baseline.class_shares))
            metrics.append(
                MetricResult(PREDICTION, "js", js, baseline.thresholds[PREDICTION]["js"])
            )
        if labels is not None:
            metrics += _label_metrics(labels, prediction, len(classes))

    drift_map = None
    if tiles is not None:
        ratios = np.full(len(next(iter(tiles.counts.values()))), -np.inf)
        for feature in baseline.features:
            distance = tile_distance(
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
