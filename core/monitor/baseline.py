"""The drift baseline: the profile of one or several baseline scenes, saved as versioned JSON.

A :class:`Baseline` holds, per band (and NDVI where the bands allow), a :class:`FeatureProfile`:
a fixed-edge histogram, a quantile sketch, mean and std; the predicted share of each class
when a model is given; per tile of the scene grid a histogram (:class:`TileReference`), so
that drift can be localised; and the threshold :func:`seamline.core.monitor.check.check`
applies to every metric. :func:`seamline.core.monitor.fit.fit_baseline` fits one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from seamline.core.data.files import atomic_path
from seamline.core.errors import BaselineError, InputFileError

__all__ = [
    "Baseline",
    "FeatureProfile",
    "TileReference",
    "grid_key",
    "FEATURE_METRICS",
    "PREDICTION",
    "HIST_BINS",
    "QUANTILE_LEVELS",
]

BASELINE_FORMAT = "seamline-drift-baseline"
BASELINE_VERSION = 1

FEATURE_METRICS = ("psi", "wasserstein", "ks")
"""Metrics computed per band and index. ``wasserstein`` is in baseline standard deviations."""

PREDICTION = "prediction"
"""Feature name of the predicted class shares; its metric is ``js``."""

HIST_BINS = 20
"""Fixed-edge histogram bins per feature, equal-frequency on the pooled baseline."""

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
"""Levels of the quantile sketch (0 = minimum, 1 = maximum)."""


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
        return grid_key(scene) == (self.shape, self.transform, self.crs)

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


def grid_key(scene: xr.DataArray) -> tuple[tuple[int, int], tuple[float, ...], str]:
    """The grid of a scene: shape, transform (rounded) and CRS as WKT (``""`` without one)."""
    crs = scene.rio.crs
    transform = tuple(round(v, 6) for v in tuple(scene.rio.transform())[:6])
    return (int(scene.shape[-2]), int(scene.shape[-1])), transform, crs.to_wkt() if crs else ""
