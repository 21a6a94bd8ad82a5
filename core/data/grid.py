"""A scene's pixel grid read from its affine transform, rotated grids included.

rioxarray derives bounds, resolution and the transform of a slice from 1-D ``x``/``y``
coordinates, which a rotated (or sheared) geotransform does not have: there its
``rio.bounds()`` is the wrong box and a sliced scene keeps the whole scene's transform (it
warns "Unable to recalculate"). These helpers work from the transform itself, so every grid
gets the same answers, and :func:`seamline.core.data.io.open_raster` opens a rotated raster
without rioxarray's 2-D coordinates (two float64 arrays of the raster's size).
"""

from __future__ import annotations

import math

import xarray as xr
from affine import Affine
from shapely.geometry import Polygon

__all__ = ["is_rotated", "footprint", "window", "pixel_size"]


def is_rotated(transform: Affine) -> bool:
    """Whether the grid's rows and columns are not along the CRS's axes (rotation or shear)."""
    return transform.b != 0 or transform.d != 0


def footprint(scene: xr.DataArray) -> Polygon:
    """The scene's outline in its CRS: the outer corners of its pixel grid."""
    t = scene.rio.transform()
    h, w = scene.sizes["y"], scene.sizes["x"]
    return Polygon([t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)])


def window(scene: xr.DataArray, rows: slice, cols: slice) -> xr.DataArray:
    """``scene.isel(y=rows, x=cols)`` georeferenced as that window, rotated grids included.

    Lazily opened scenes stay lazy: nothing is read until the window's values are used.
    """
    transform = scene.rio.transform()
    out = scene.isel(y=rows, x=cols)
    if is_rotated(transform):  # no 1-D coordinates for rioxarray to recompute it from
        col0, row0 = cols.indices(scene.sizes["x"])[0], rows.indices(scene.sizes["y"])[0]
        out = out.rio.write_transform(transform * Affine.translation(col0, row0))
    return out


def pixel_size(transform: Affine) -> tuple[float, float]:
    """A pixel's width and height in CRS units (the lengths of its sides, rotated or not)."""
    return math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
