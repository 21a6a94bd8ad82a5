"""Axis labels and tick formats for maps drawn in a scene's own CRS."""

from __future__ import annotations

from typing import Any

from pyproj import CRS

_WHOLE_UNITS = {"metre": "m", "foot": "ft", "US survey foot": "ftUS"}  # ticks without decimals


def map_axes(crs: Any) -> dict[str, str]:
    """HoloViews options naming the axes of a map in ``crs`` (anything pyproj reads, e.g. a
    rioxarray CRS, or None): ``x (m)`` / ``y (m)`` with whole units for a projected CRS in
    metres or feet, ``longitude (°)`` / ``latitude (°)`` with four decimals (~10 m) for a
    geographic one, and plain ``x`` / ``y`` (with the unit when it is known) otherwise."""
    crs = CRS.from_user_input(crs) if crs is not None else None
    if crs is not None and crs.is_geographic:
        return {"xlabel": "longitude (°)", "ylabel": "latitude (°)",
                "xformatter": "%.4f", "yformatter": "%.4f"}  # fmt: skip
    unit = crs.axis_info[0].unit_name if crs is not None and crs.axis_info else "unknown"
    if unit in _WHOLE_UNITS:
        short = _WHOLE_UNITS[unit]
        return {"xlabel": f"x ({short})", "ylabel": f"y ({short})",
                "xformatter": "%.0f", "yformatter": "%.0f"}  # fmt: skip
    named = f" ({unit})" if unit != "unknown" else ""
    return {"xlabel": f"x{named}", "ylabel": f"y{named}", "xformatter": "%.2f",
            "yformatter": "%.2f"}  # fmt: skip
