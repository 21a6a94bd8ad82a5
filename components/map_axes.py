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


def map_frame(scene: Any, *, max_width: int = 580, max_height: int = 560) -> dict[str, Any]:
    """HoloViews options that draw ``scene`` (anything with ``.rio.bounds()``) at 1:1 in its
    CRS units, in a frame of at most ``max_width`` x ``max_height`` px (a tall scene gets a
    narrower frame, a wide one a lower frame, never a squeezed one), starting on its extent.

    A fixed frame of the scene's own aspect, rebuilt when the scene changes: ``data_aspect``
    on a responsive plot in a pane of fixed height did not hold 1:1 (a square scene was drawn
    ~1.9x wide at 1920 px), and a width-responsive 1:1 frame overflows the viewport. The
    extent is explicit: a figure built while its tab was hidden started on the previous
    scene's ranges."""
    left, bottom, right, top = scene.rio.bounds()
    aspect = max(right - left, 1e-12) / max(top - bottom, 1e-12)
    width = min(max_width, max_height * aspect)
    return {"frame_width": max(1, round(width)), "frame_height": max(1, round(width / aspect)),
            "xlim": (left, right), "ylim": (bottom, top)}  # fmt: skip
