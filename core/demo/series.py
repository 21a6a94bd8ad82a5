"""The demo's dated series for the monitoring stage.

:func:`make_series` strings synthetic scenes into a dated series in which each change a drift
monitor should notice happens on a known date (:class:`SeriesEvents`);
:func:`synthetic_series` and :func:`eo_series` give it, and the real Sentinel-2 NDVI series of
``shared/data/eo_timeseries`` (its folder is given, never found from a source file's
location), as :class:`~seamline.core.monitor.series.DatedScene` items.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from seamline.core.demo.checks import check_integer, check_number, check_pair
from seamline.core.demo.data import eo_timeseries
from seamline.core.demo.synthetic import make_scene, season_for
from seamline.core.monitor.series import CLEAR_CLOUD_FRACTION, DatedScene

__all__ = [
    "SeriesEvents",
    "SyntheticScene",
    "make_series",
    "synthetic_series",
    "eo_series",
    "SYNTHETIC_START",
    "SYNTHETIC_FREQ_DAYS",
]

SYNTHETIC_START = "2024-05-01"
SYNTHETIC_FREQ_DAYS = 10
"""Synthetic dates: every 10 days from 1 May, so phenology stays flat up to early October
(``seamline.core.demo.synthetic.season_for``) and the score shows the injected changes, not the
season."""


def synthetic_series(n: int, size: int, *, seed: int = 0) -> list[DatedScene]:
    """``make_series`` with its default events (clouds, construction, recalibration), summer
    dates every :data:`SYNTHETIC_FREQ_DAYS` days from :data:`SYNTHETIC_START`."""
    events = SeriesEvents()
    return [
        DatedScene(
            s.time,
            s.scene,
            s.events,
            events.cloud_cover if "clouds" in s.events else 0.0,
        )
        for s in make_series(
            n,
            height=size,
            width=size,
            seed=seed,
            start=SYNTHETIC_START,
            freq_days=SYNTHETIC_FREQ_DAYS,
            events=events,
        )
    ]


def eo_series(folder: str | Path) -> list[DatedScene]:
    """The real NDVI series; cloudy dates (cloud mask >= 1 %) carry a ``clouds N %`` event."""
    return [
        DatedScene(
            s.time,
            s.scene,
            (f"clouds {s.cloud_fraction:.0%}",) if s.cloud_fraction >= CLEAR_CLOUD_FRACTION else (),
            s.cloud_fraction,
        )
        for s in eo_timeseries(folder)
    ]


@dataclass(frozen=True)
class SeriesEvents:
    """When the known changes of :func:`make_series` happen (0-based acquisition indices).

    Event names in :attr:`SyntheticScene.events`:

    - ``"recalibration"``: from ``recalibration_index`` on, every scene uses
      ``gain=recalibration_gain`` and ``offset=recalibration_offset`` (named on the first
      date only). ``None`` disables it.
    - ``"construction"``: from ``construction_start_index`` on, ``built_up_growth`` grows by
      ``construction_rate`` per acquisition up to 1 (named on each date it grows). ``None``
      disables it.
    - ``"clouds"``: the acquisitions in ``cloudy_indices`` have ``cloud_cover`` clouds.

    Indices at or beyond the series length never happen. Seasonal phenology is continuous
    (see :func:`season_for`) and is not named as an event.
    """

    recalibration_index: int | None = 8
    recalibration_gain: float = 1.15
    recalibration_offset: float = 0.02
    construction_start_index: int | None = 4
    construction_rate: float = 0.25
    growth_center: tuple[float, float] = (0.5, 0.5)
    cloudy_indices: tuple[int, ...] = (2, 10)
    cloud_cover: float = 0.4

    def __post_init__(self) -> None:
        """Validate the fields, raising ValueError naming the first bad one."""
        for name in ("recalibration_index", "construction_start_index"):
            if getattr(self, name) is not None:
                check_integer(name, getattr(self, name), 0)
        for index in self.cloudy_indices:
            check_integer("cloudy_indices", index, 0)
        check_number("recalibration_gain", self.recalibration_gain, 0, math.inf, open_low=True)
        check_number("recalibration_offset", self.recalibration_offset, -1, 1)
        check_number("construction_rate", self.construction_rate, 0, 1, open_low=True)
        check_pair("growth_center", self.growth_center, 0, 1)
        check_number("cloud_cover", self.cloud_cover, 0, 1)

    def at(self, index: int) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Keyword arguments for :func:`make_scene` and event names at acquisition ``index``."""
        kwargs: dict[str, Any] = {}
        events: list[str] = []
        if self.cloud_cover > 0 and index in self.cloudy_indices:
            kwargs["cloud_cover"] = self.cloud_cover
            events.append("clouds")
        start = self.construction_start_index
        if start is not None and index >= start:
            growth = min(1.0, (index - start + 1) * self.construction_rate)
            kwargs.update(built_up_growth=growth, growth_center=self.growth_center)
            if growth > (index - start) * self.construction_rate:
                events.append("construction")
        if self.recalibration_index is not None and index >= self.recalibration_index:
            kwargs.update(gain=self.recalibration_gain, offset=self.recalibration_offset)
            if index == self.recalibration_index:
                events.append("recalibration")
        return kwargs, tuple(events)


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """One acquisition of a synthetic series: its date, scene, labels and named changes."""

    time: dt.datetime
    scene: xr.DataArray
    labels: xr.DataArray
    events: tuple[str, ...]
    season: float


def _start_datetime(start: object) -> dt.datetime:
    """``start`` (ISO string, date or datetime) as a datetime, or raise ValueError."""
    if isinstance(start, dt.datetime):
        return start
    if isinstance(start, dt.date):
        return dt.datetime.combine(start, dt.time())
    try:
        return dt.datetime.fromisoformat(start)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"start must be an ISO date like '2024-01-01', got {start!r}.") from None


def make_series(
    n: int = 12,
    *,
    height: int = 256,
    width: int = 256,
    seed: int = 0,
    start: str | dt.date = "2024-01-01",
    freq_days: int = 30,
    events: SeriesEvents | None = None,
) -> list[SyntheticScene]:
    """Generate ``n`` dated scenes of one landscape with known, dated changes.

    Acquisition ``i`` is taken ``start + i * freq_days`` days, with ``season_for(date)``
    phenology, the changes of ``events`` (default :class:`SeriesEvents()`), ``seed`` for the
    layout and ``acquisition=i`` for sensor noise and clouds. Without construction every
    scene has the same labels.
    """
    n = check_integer("n", n, 1)
    freq_days = check_integer("freq_days", freq_days, 1)
    first = _start_datetime(start)
    events = SeriesEvents() if events is None else events

    series = []
    for index in range(n):
        time = first + dt.timedelta(days=index * freq_days)
        season = season_for(time)
        kwargs, names = events.at(index)
        scene, labels = make_scene(
            height, width, seed=seed, season=season, acquisition=index, **kwargs
        )
        series.append(SyntheticScene(time, scene, labels, names, season))
    return series
