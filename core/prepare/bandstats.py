"""Training-baseline band statistics: fit once, save beside the model, normalise live scenes.

Live scenes are normalised with the *baseline's* statistics, never their own min/max: a
per-scene stretch hides exactly the shifts (sensor gain, season) that drift monitoring must
see. Statistics are fitted on valid pixels only (nodata excluded).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from seamline.core.data.files import atomic_path
from seamline.core.data.io import band_names, valid_mask
from seamline.core.errors import (
    BandMismatchError,
    InputFileError,
    InvalidArgumentError,
    NoDataError,
)

__all__ = ["BandStats", "fit_band_stats", "normalise", "band_order", "NORMALISATIONS"]

SCHEMA_VERSION = 1
NORMALISATIONS = ("zscore", "percentile")
#: Percentiles are computed on at most this many valid pixels per scene, taken on a regular
#: spatial grid: exact for small scenes, a fixed-memory estimate for huge ones.
MAX_PERCENTILE_SAMPLES = 2_000_000
_BLOCK_PIXELS = 1 << 22  # rows per block for the exact mean/std pass: ~4 Mpx at a time


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics of the training baseline (valid pixels only).

    Attributes
    ----------
    bands: band names, in the order the model expects them.
    mean, std: exact per-band mean and standard deviation.
    p02, p98: 2nd and 98th percentiles (robust range).
    count: number of valid pixels per band the statistics were fitted on.
    """

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    p02: tuple[float, ...]
    p98: tuple[float, ...]
    count: int
    version: int = SCHEMA_VERSION

    def fingerprint(self) -> str:
        """A short hash of the statistics, recorded on every scene they normalise."""
        canonical = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]

    def offset_scale(self, method: str = "zscore") -> tuple[np.ndarray, np.ndarray]:
        """Per-band ``offset`` and ``scale`` of ``(x - offset) / scale``: mean and std for
        ``zscore``, p02 and p98 - p02 for ``percentile``; a scale of 0 (a constant band)
        becomes 1, so the band maps to 0, not to inf."""
        if method not in NORMALISATIONS:
            raise InvalidArgumentError(f"method must be one of {NORMALISATIONS}, got {method!r}")
        if method == "zscore":
            offset, scale = np.asarray(self.mean), np.asarray(self.std)
        else:
            offset = np.asarray(self.p02)
            scale = np.asarray(self.p98) - np.asarray(self.p02)
        return offset, np.where(scale > 0, scale, 1.0)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> BandStats:
        """Build from :meth:`to_dict` output; raises ``ValueError`` on a malformed dict."""
        fields = ("bands", "mean", "std", "p02", "p98", "count")
        missing = [f for f in fields if f not in data]
        if missing:
            raise ValueError(f"band statistics lack {', '.join(missing)}")
        n = len(data["bands"])
        if any(len(data[f]) != n for f in ("mean", "std", "p02", "p98")):
            raise ValueError("band statistics have lists of different lengths")
        return cls(
            bands=tuple(str(b) for b in data["bands"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            p02=tuple(float(v) for v in data["p02"]),
            p98=tuple(float(v) for v in data["p98"]),
            count=int(data["count"]),
            version=int(data.get("version", SCHEMA_VERSION)),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON (atomically)."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BandStats:
        """Read statistics written by :meth:`save`, or those in a model's JSON sidecar."""
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"Band statistics file {str(path)!r} does not exist.")
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "bands" in data and "mean" not in data:
                data = data.get("stats") or {}  # a model sidecar: its baseline statistics
            return cls.from_dict(data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputFileError(
                f"Band statistics file {str(path)!r} is not valid ({exc}): "
                "re-create it with `seamline prepare --fit-stats`."
            ) from None


def fit_band_stats(
    scenes: xr.DataArray | Iterable[xr.DataArray],
    *,
    max_samples: int = MAX_PERCENTILE_SAMPLES,
) -> BandStats:
    """Fit per-band mean, std and 2/98 percentiles over one or several baseline scenes.

    All scenes must have the same band names. Nodata pixels are excluded. Mean and std are
    exact (float64 block accumulation); percentiles are exact up to ``max_samples`` valid
    pixels per scene and estimated from a regular spatial thinning beyond that.
    """
    if isinstance(scenes, xr.DataArray):
        scenes = [scenes]
    names: tuple[str, ...] | None = None
    sums = sumsq = shift = None
    count = 0
    samples: list[np.ndarray] = []
    for scene in scenes:
        if names is None:
            names = band_names(scene)
        elif band_names(scene) != names:
            raise BandMismatchError(
                f"Baseline scenes have different bands ({names} vs {band_names(scene)}): "
                "fit statistics on scenes of one sensor."
            )
        values = np.asarray(scene.values)
        valid = valid_mask(scene)
        n_valid = int(valid.sum())
        if n_valid == 0:
            continue
        if shift is None:  # shifted sums keep the variance exact for large offsets
            shift = _sample(values, valid, 1024).mean(axis=1)
            sums = np.zeros(len(names))
            sumsq = np.zeros(len(names))
        s, sq = _shifted_sums(values, valid, shift)
        sums += s
        sumsq += sq
        count += n_valid
        samples.append(_sample(values, valid, max_samples))
    if names is None or count == 0:
        raise NoDataError("The baseline scenes have no valid pixels: check their nodata value.")
    mean = shift + sums / count
    std = np.sqrt(np.maximum(sumsq / count - (sums / count) ** 2, 0.0))
    sample = np.concatenate(samples, axis=1)
    p02, p98 = np.percentile(sample, [2, 98], axis=1)
    return BandStats(
        bands=names,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        p02=tuple(p02.tolist()),
        p98=tuple(p98.tolist()),
        count=count,
    )


def _shifted_sums(
    values: np.ndarray, valid: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band sum and sum of squares of ``values - shift`` over valid pixels, in blocks."""
    rows = max(1, _BLOCK_PIXELS // max(1, values.shape[2]))
    sums = np.zeros(values.shape[0])
    sumsq = np.zeros(values.shape[0])
    for start in range(0, values.shape[1], rows):  # bounded memory: one block of rows at a time
        block_valid = valid[start : start + rows]
        block = values[:, start : start + rows][:, block_valid].astype(np.float64)
        block -= shift[:, None]
        sums += block.sum(axis=1)
        sumsq += np.einsum("ij,ij->i", block, block)
    return sums, sumsq


def _sample(values: np.ndarray, valid: np.ndarray, max_samples: int) -> np.ndarray:
    """Valid pixels on a regular grid thinned to at most ``max_samples``: ``(band, n)``."""
    stride = max(1, int(np.ceil(np.sqrt(valid.sum() / max_samples))))
    thinned_valid = valid[::stride, ::stride]
    return values[:, ::stride, ::stride][:, thinned_valid].astype(np.float64)


def band_order(scene: xr.DataArray, required: Sequence[str], *, by: str) -> list[int]:
    """Indices of the scene's bands in the order of ``required`` (names), else one sentence.

    Scenes whose bands carry no names (``band_1..band_N``) are taken in file order when the
    count matches. ``by`` names who requires the bands, for the error message.
    """
    names = band_names(scene)
    if set(required) <= set(names):
        return [names.index(b) for b in required]
    generic = all(n == f"band_{i + 1}" for i, n in enumerate(names))
    if generic and len(names) == len(required):
        return list(range(len(names)))
    missing = [b for b in required if b not in names]
    raise BandMismatchError(
        f"The scene's bands {list(names)} lack {missing} required by {by}: "
        "pass a scene of the matching sensor or name its bands (--band-names, band_names=)."
    )


def normalise(
    scene: xr.DataArray,
    stats: BandStats,
    *,
    method: str = "zscore",
) -> xr.DataArray:
    """Normalise a scene with baseline statistics; float32, NaN where invalid (and in a
    band where it holds the nodata value or an infinity, as where it holds NaN).

    ``method`` is ``"zscore"`` (``(x - mean) / std``) or ``"percentile"``
    (``(x - p02) / (p98 - p02)``, the robust 2-98 % range mapped to 0..1, not clipped).
    Bands are selected and ordered by name to match ``stats.bands``.
    """
    offset, scale = stats.offset_scale(method)
    order = band_order(scene, stats.bands, by="the band statistics")
    valid = valid_mask(scene)
    values = np.asarray(scene.values)
    nodata = scene.rio.nodata
    out = np.empty((len(order), *values.shape[1:]), dtype=np.float32)
    for i, b in enumerate(order):  # per band: temporaries stay (y, x)-sized
        np.subtract(values[b], offset[i], out=out[i], dtype=np.float32, casting="unsafe")
        out[i] /= np.float32(scale[i])
        out[i][~valid] = np.nan
        if nodata is not None and not np.isnan(nodata):  # a band's own missing values
            out[i][values[b] == nodata] = np.nan
        if values.dtype.kind == "f":  # +-inf: no data, as NaN
            out[i][np.isinf(values[b])] = np.nan
    result = xr.DataArray(
        out,
        dims=("band", "y", "x"),
        coords={"band": list(stats.bands), "y": scene["y"], "x": scene["x"]},
        attrs={"long_name": stats.bands, "normalisation": method,
               "band_stats": stats.fingerprint()},
        name=scene.name,
    )
    result.rio.write_crs(scene.rio.crs, inplace=True)
    result.rio.write_transform(scene.rio.transform(), inplace=True)
    result.rio.write_nodata(np.nan, encoded=False, inplace=True)
    return result
