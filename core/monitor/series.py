"""Monitoring a dated series of scenes: load it, fit the baseline on its first clear dates,
check every date and assess the re-fit response.

The loop behind the dashboard's monitoring section and any batch job that watches a site:
:func:`monitor_series` takes :class:`DatedScene` items, from :func:`folder_series` (a folder
of dated GeoTIFFs) or any other source (the demo series are in :mod:`seamline.core.demo.series`).
No UI here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from seamline.core.data.io import band_names, open_raster, read_geotiff_bytes
from seamline.core.data.limits import DEFAULT_BUDGET, MAX_VALUE_BYTES, InputBudget
from seamline.core.data.paths import resolve_under
from seamline.core.errors import (
    BandMismatchError,
    InputFileError,
    InvalidArgumentError,
    SizeLimitError,
)
from seamline.core.models.modelio import load_model
from seamline.core.monitor.check import check
from seamline.core.monitor.fit import fit_baseline
from seamline.core.monitor.refit import assess_refit

__all__ = [
    "DatedScene",
    "Monitoring",
    "monitor_series",
    "folder_series",
]

CLEAR_CLOUD_FRACTION = 0.01
"""Dates with a known cloud fraction at or above this never enter the baseline."""

DATE_IN_NAME = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
MAX_SERIES_FILES = 366
"""Most GeoTIFFs a budgeted folder may hold: a daily series of a year."""
SERIES_SCENES = 4
"""A budgeted series holds at most this many input budgets of decoded pixels (2 GiB at the
default budget: e.g. 40 dates of 2048 x 2048 x 6 uint16)."""


@dataclass(frozen=True, eq=False)
class DatedScene:
    """One acquisition: its time, ``(band, y, x)`` scene, named events and cloud fraction.

    ``cloud_fraction`` is ``None`` where unknown (a folder of GeoTIFFs): counted as clear.
    """

    time: dt.datetime
    scene: xr.DataArray
    events: tuple[str, ...] = ()
    cloud_fraction: float | None = None

    @property
    def clear(self) -> bool:
        """Whether the date may enter the baseline (cloud fraction under 1 % or unknown)."""
        return self.cloud_fraction is None or self.cloud_fraction < CLEAR_CLOUD_FRACTION


def _file_time(path: Path) -> dt.datetime:
    """The date in a file name (``YYYY-MM-DD`` or ``YYYYMMDD``), else the file's mtime."""
    match = DATE_IN_NAME.search(path.stem)
    if match:
        try:
            return dt.datetime(*(int(g) for g in match.groups()))
        except ValueError:  # eight digits that are no date
            pass
    return dt.datetime.fromtimestamp(path.stat().st_mtime)


def _untrusted_scene(path: Path, budget: InputBudget) -> xr.DataArray:
    """A folder's GeoTIFF read as an upload is: its bytes and header within ``budget``
    before a pixel is decoded, by GDAL's GTiff driver only (a VRT named ``.tif`` would read
    other server files or URLs)."""
    source, fix = f"GeoTIFF {path.name!r}", "crop it to the site with `seamline prepare --aoi`"
    budget.check_bytes(path.stat().st_size, source=source, fix=fix)
    return read_geotiff_bytes(path.read_bytes(), budget=budget, source=source, fix=fix)


def folder_series(
    folder: str | Path,
    *,
    roots: Sequence[str | Path] | None = None,
    budget: InputBudget | None = None,
) -> list[DatedScene]:
    """Every GeoTIFF of a folder, in date order (date from the file name, else mtime).

    With ``roots`` (a server's data roots), the folder and every file in it must resolve
    inside them (:func:`seamline.core.data.paths.resolve_under`): ``..``, other absolute paths and
    symlinks leading out are refused before anything is read. With a ``budget`` (with
    ``roots``, default :data:`~seamline.core.data.limits.DEFAULT_BUDGET`) each file is read as
    an upload is (:func:`seamline.core.data.io.read_geotiff_bytes`: GTiff only, bytes and
    header checked first), the folder holds at most :data:`MAX_SERIES_FILES` files and the
    series at most :data:`SERIES_SCENES` budgets of decoded pixels.

    Raises :class:`~core.errors.SeamlineError` with one sentence for a missing folder, a
    folder outside ``roots``, a folder without GeoTIFFs, an unreadable file or files whose
    bands differ.
    """
    if not str(folder).strip():
        raise InputFileError("No folder given: enter a folder of dated GeoTIFFs.")
    path = Path(folder).expanduser() if roots is None else resolve_under(folder, roots)
    if not path.is_dir():
        raise InputFileError(
            f"Folder {str(path)!r} does not exist: enter a folder of dated GeoTIFFs."
        )
    files = sorted(
        (_file_time(p), p if roots is None else resolve_under(p, roots))
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in GEOTIFF_SUFFIXES
    )
    if not files:
        raise InputFileError(
            f"Folder {str(path)!r} holds no GeoTIFF (.tif, .tiff): add one scene per date."
        )
    if budget is None and roots is not None:  # a visitor's folder: never unbounded
        budget = DEFAULT_BUDGET
    if budget is not None and len(files) > MAX_SERIES_FILES:
        raise SizeLimitError(
            f"Folder {str(path)!r} holds {len(files)} GeoTIFFs, more than the "
            f"{MAX_SERIES_FILES} dates a series may have: keep one folder per site and year."
        )
    series, held = [], 0
    for time, p in files:
        scene = open_raster(p).load() if budget is None else _untrusted_scene(p, budget)
        held += scene.nbytes
        if budget is not None and held > budget.max_pixels * MAX_VALUE_BYTES * SERIES_SCENES:
            raise SizeLimitError(
                f"The GeoTIFFs of folder {str(path)!r} up to {p.name!r} hold "
                f"{held / 2**20:,.0f} MiB of pixels, more than the "
                f"{budget.max_pixels * MAX_VALUE_BYTES * SERIES_SCENES / 2**20:,.0f} MiB a "
                "series may hold: keep fewer or smaller dates in the folder (crop them to "
                "the site with `seamline prepare --aoi`)."
            )
        series.append(DatedScene(time, scene))
    bands = band_names(series[0].scene)
    for (_, p), item in zip(files, series, strict=True):
        if band_names(item.scene) != bands:
            raise BandMismatchError(
                f"GeoTIFF {p.name!r} has bands {list(band_names(item.scene))} but "
                f"{files[0][1].name!r} has {list(bands)}: keep scenes of one sensor in the folder."
            )
    return series


# --------------------------------------------------------------------------- compute


@dataclass(frozen=True, eq=False)
class Monitoring:
    """What :func:`monitor_series` measured.

    ``results`` has one row per date: ``time``, ``events``, ``baseline`` (the date is one of
    the baseline's), ``score``, ``drift``, ``threshold``, ``driver``, ``drifted_tiles`` and
    one ``{feature}_{metric}`` column per scored metric. ``class_shares`` is time x class
    (``None`` without a model), ``maps`` the per-tile drift map of each date (``None`` where
    the scene is off the baseline's grid), ``refit`` the re-fit response of one date.
    """

    results: pd.DataFrame
    class_shares: pd.DataFrame | None
    maps: list[xr.DataArray | None]
    refit: dict[str, Any]
    class_colors: tuple[str, ...] = ()


def _refit_target(series: Sequence[DatedScene], results: pd.DataFrame) -> tuple[int, str]:
    """The date the re-fit response runs on, chosen from the measurements alone (whatever the
    series' events are called): among the clear, checked dates that drifted, the one whose
    score rose most over the clear date before it (a step, as a sensor recalibration or a
    processing change makes, which re-fitting the normalisation answers; gradual change and
    clouds are not steps); else the highest-scoring checked date."""
    clear = pd.Series([item.clear for item in series], index=results.index)
    previous = results["score"].where(clear).ffill().shift(1)
    rise = (results["score"] - previous).where(clear & results["drift"] & ~results["baseline"])
    if rise.notna().any():
        return int(np.nanargmax(rise.to_numpy(dtype=float))), "largest step in score"
    checked = results["score"].where(~results["baseline"])  # NaN on baseline dates
    scores = checked if checked.notna().any() else results["score"]
    return int(np.nanargmax(scores.to_numpy())), "highest score"


def monitor_series(
    series: Sequence[DatedScene],
    *,
    baseline_count: int = 3,
    model: Any = None,
    tile_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Monitoring:
    """Fit a baseline on the first clear dates of a series, check every date, assess a re-fit.

    Parameters
    ----------
    series
        Dated scenes of one sensor, in time order.
    baseline_count
        The baseline is fitted on the first ``baseline_count`` clear dates (two or more:
        thresholds calibrated leave-one-out; one: ``seamline.core.monitor.fit.DEFAULT_THRESHOLDS``).
    model
        ``None``, ``"demo"``, a path or a loaded model: adds the predicted class shares, the
        ``prediction_js`` metric and the prediction agreement of the re-fit.
    tile_size
        Drift map cell, in pixels.
    progress
        Called as ``progress(done, total)`` after each step (fit, each date, re-fit).

    The re-fit (:func:`seamline.core.monitor.refit.assess_refit`) runs on the clear, flagged
    date whose score rose most over the clear date before it, else on the highest-scoring date
    after the baseline (see ``_refit_target``); its reference prediction is the previous date's.
    """
    if not series:
        raise InvalidArgumentError("The series is empty: pick a source with at least one date.")
    if not isinstance(baseline_count, int) or baseline_count < 1:
        raise InvalidArgumentError(
            f"baseline_count must be a positive integer, got {baseline_count!r}."
        )
    clear = [i for i, item in enumerate(series) if item.clear]
    if len(clear) < baseline_count:
        raise InvalidArgumentError(
            f"The series has {len(clear)} clear dates, fewer than the baseline count "
            f"{baseline_count}: lower the baseline count or add dates."
        )
    base = clear[:baseline_count]
    total, done = len(series) + 2, 0
    report = progress or (lambda done, total: None)
    report(done, total)

    loaded = load_model(model) if model is not None else None
    baseline = fit_baseline([series[i].scene for i in base], loaded, tile_size=tile_size)
    done += 1
    report(done, total)

    checks = []
    for item in series:
        checks.append(check(item.scene, baseline, model=loaded))
        done += 1
        report(done, total)

    results = pd.DataFrame(
        [
            {
                "time": item.time,
                "events": ", ".join(item.events),
                "baseline": i in base,
                "score": r.score,
                "drift": r.drift,
                "threshold": r.threshold,
                "driver": r.driver,
                "drifted_tiles": np.nan if r.drifted_tiles is None else r.drifted_tiles,
                **{f"{m.feature}_{m.metric}": m.value for m in r.metrics if m.threshold},
            }
            for i, (item, r) in enumerate(zip(series, checks, strict=True))
        ]
    )
    class_shares = None
    if loaded is not None:
        class_shares = pd.DataFrame(
            [r.class_shares for r in checks], index=pd.Index(results["time"], name="time")
        )

    index, reason = _refit_target(series, results)
    reference = checks[index - 1].prediction if index > 0 else None
    response = assess_refit(
        series[index].scene,
        baseline,
        model=loaded,
        reference=reference if loaded is not None else None,
    )
    report(total, total)
    refit = {
        "index": index,
        "time": series[index].time,
        "events": ", ".join(series[index].events),
        "reason": reason,
        "reference_time": series[index - 1].time if reference is not None else None,
        **response.to_dict(),
    }
    return Monitoring(
        results=results,
        class_shares=class_shares,
        maps=[r.drift_map for r in checks],
        refit=refit,
        class_colors=tuple(loaded.colors) if loaded is not None else (),
    )
