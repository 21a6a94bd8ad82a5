"""The response to drift, the loop back to ``prepare``: re-fit a scene's normalisation.

:func:`assess_refit` quantile-matches a scene to the baseline (:func:`refit_normalisation`,
undoing a sensor gain/offset step by ``np.interp`` on the quantile sketches) and reports the
score and the prediction agreement before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from seamline.core.data.io import valid_mask
from seamline.core.errors import InvalidArgumentError
from seamline.core.monitor.baseline import QUANTILE_LEVELS, Baseline
from seamline.core.monitor.check import DriftResult, check
from seamline.core.monitor.sampling import PROFILE_SAMPLES, thin
from seamline.core.prepare.bandstats import band_order

__all__ = [
    "RefitReport",
    "refit_normalisation",
    "assess_refit",
]


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
        own = np.quantile(thin(np.where(valid, values[b], np.nan), PROFILE_SAMPLES),
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
    from seamline.core.predict.blocks import CLASS_NODATA

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
