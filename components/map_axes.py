"""Axis labels and tick formats for maps drawn in a scene's own CRS."""

from __future__ import annotations

from typing import Any

from pyproj import CRS

_UNIT_ABBREVIATIONS = {"metre": "m", "foot": "ft", "US survey foot": "ftUS"}


def map_axes(crs: Any) -> dict[str, str]:
    """HoloViews options naming the axes of a map in ``crs`` (anything pyproj reads, e.g. a
    rioxarray CRS): ``x (m)`` / ``y (m)`` with whole units for a projected CRS (its own unit),
    ``longitude (°)`` / ``latitude (°)`` with four decimals (~10 m) for a geographic one."""
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        return {"xlabel": "longitude (°)", "ylabel": "latitude (°)",
                "xformatter": "%.4f", "yformatter": "%.4f"}  # fmt: skip
    unit = crs.axis_info[0].unit_name if crs.axis_info else "unknown"
    short = _UNIT_ABBREVIATIONS.get(unit, unit)
    return {"xlabel": f"x ({short})", "ylabel": f"y ({short})",
            "xformatter": "%.0f", "yformatter": "%.0f"}  # fmt: skip
