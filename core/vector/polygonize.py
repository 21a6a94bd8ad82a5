"""Vector output: class polygons from a class raster, window by window, merged across seams.

:func:`polygonize` turns a class-id raster (as
:func:`seamline.core.predict.scene.predict_scene` returns it or ``seamline predict`` writes it)
into one polygon per connected component of each class, in the raster's CRS.
:func:`seamline.core.vector.writers.write_polygons` writes them as GeoPackage, GeoJSON or
GeoParquet. The raster is read through :mod:`seamline.core.vector.class_raster` and
polygonized window by window by :mod:`seamline.core.vector.seams`, which says how windows stay
invisible: a windowed run gives exactly the polygons of a whole-raster run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import shapely

from seamline.core.errors import InvalidArgumentError
from seamline.core.vector.class_raster import Raster, class_ids_of, opened
from seamline.core.vector.seams import Batch, polygon_batches

# No xarray, rioxarray or geopandas at import time: `seamline vectorize` reads the file with
# rasterio and writes a GeoPackage with sqlite3, and those imports would be most of its
# memory. polygonize() imports geopandas for the GeoDataFrame it returns.
if TYPE_CHECKING:
    import geopandas as gpd

    from seamline.core.vector.class_raster import Classes

__all__ = [
    "polygonize",
    "DEFAULT_WINDOW",
    "AUTO_WINDOW_PIXELS",
    "prepare",
    "collect",
    "polygon_frame",
    "attribute_columns",
]

DEFAULT_WINDOW = 2048
"""Window side in pixels used when a raster is larger than :data:`AUTO_WINDOW_PIXELS`."""

AUTO_WINDOW_PIXELS = 4096 * 4096
"""Rasters with more pixels than this are always read window by window."""

GDAL_CACHE = 2 * 2**20  # bytes: windows are read once each; a bigger block cache only grows RSS


def polygonize(
    classes: Classes,
    *,
    classes_to_keep: Sequence[int | str] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = 4,
    window: int | None = None,
    background: int | str | None = None,
) -> gpd.GeoDataFrame:
    """Class polygons of a class-id raster: one feature per connected component of a class.

    Parameters
    ----------
    classes
        A ``(y, x)`` (or one-band) integer DataArray with a CRS, as ``predict_scene`` returns,
        or the path of a class GeoTIFF, as ``seamline predict`` writes.
    classes_to_keep
        Class ids or names to polygonize (default: all). Names come from the raster's
        ``classes`` attribute or tag, which Seamline's predictions carry.
    min_area
        In CRS units squared (default 0: keep all). Polygons smaller than this are dropped and
        holes smaller than this are filled, as a sieve would (the enclosing polygon takes the
        hole; a small patch between two other classes leaves a gap instead).
    simplify
        Tolerance in CRS units (default 0: exact pixel edges). Coverage simplification
        (:func:`shapely.coverage_simplify`): shared edges between neighbours are simplified
        once, so neighbours stay gap- and overlap-free.
    connectivity
        4 (default: pixels touching by an edge are connected) or 8 (corners connect too; a
        component joined only at a corner is then a MultiPolygon).
    window
        Read and polygonize ``window`` x ``window`` pixels at a time; seams are merged, so the
        result equals the whole-raster result. Default: the whole raster, or windows of
        :data:`DEFAULT_WINDOW` when it has more than :data:`AUTO_WINDOW_PIXELS` pixels.
    background
        A class id or name that gives no polygons (default: none). Nodata never does.

    Returns
    -------
    GeoDataFrame with ``class_id``, ``class_name``, ``area`` (CRS units squared) and
    ``geometry``, in the raster's CRS, sorted by class, then north to south and west to east.
    """
    with prepare(
        classes, classes_to_keep, min_area, simplify, connectivity, window, background
    ) as (raster, options):
        return polygon_frame(*collect(raster, options, simplify), raster)


def collect(raster: Raster, options: dict, simplify: float) -> Batch:
    """All polygons at once, in a canonical order, coverage-simplified if asked."""
    batches = list(polygon_batches(raster, **options))
    geoms = np.concatenate([b[0] for b in batches])
    class_ids = np.concatenate([b[1] for b in batches])
    bounds = shapely.bounds(geoms)
    order = np.lexsort((bounds[:, 1], bounds[:, 2], bounds[:, 0], -bounds[:, 3], class_ids))
    geoms, class_ids = geoms[order], class_ids[order]
    if simplify > 0 and len(geoms):
        geoms = shapely.coverage_simplify(geoms, simplify)
    return geoms, class_ids


# -- validation -------------------------------------------------------------------------------


@contextmanager
def prepare(
    classes: Classes,
    classes_to_keep: Sequence[int | str] | None,
    min_area: float,
    simplify: float,
    connectivity: int,
    window: int | None,
    background: int | str | None,
) -> Iterator[tuple[Raster, dict]]:
    """Validate the arguments first (cheap), then the raster; give it and the engine's options."""
    if connectivity not in (4, 8):
        raise InvalidArgumentError(f"connectivity must be 4 or 8, got {connectivity!r}.")
    if not min_area >= 0 or not simplify >= 0:
        raise InvalidArgumentError(
            f"min_area and simplify must be >= 0, got {min_area!r} and {simplify!r}."
        )
    if window is not None and (not isinstance(window, int | np.integer) or window < 1):
        raise InvalidArgumentError(f"window must be a positive number of pixels, got {window!r}.")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE), opened(classes) as raster:
        if window is None and raster.shape[0] * raster.shape[1] > AUTO_WINDOW_PIXELS:
            window = DEFAULT_WINDOW
        keep = None if classes_to_keep is None else class_ids_of(classes_to_keep, raster)
        drop = set() if background is None else class_ids_of([background], raster)
        yield raster, {
            "keep": keep,
            "drop": drop,
            "min_area": float(min_area),
            "connectivity": connectivity,
            "window": int(window) if window else None,
        }


# -- the GeoDataFrame -------------------------------------------------------------------------


def polygon_frame(
    geoms: np.ndarray, class_ids: np.ndarray, raster: Raster
) -> gpd.GeoDataFrame:
    """CRS polygons and their attributes as a GeoDataFrame in the raster's CRS."""
    import geopandas as gpd

    return gpd.GeoDataFrame(
        attribute_columns(geoms, class_ids, raster.names),
        geometry=gpd.GeoSeries(geoms, crs=raster.crs),
    )


def attribute_columns(
    geoms: np.ndarray, class_ids: np.ndarray, names: tuple[str, ...]
) -> dict:
    """The attributes of polygons: class id, class name and area (CRS units squared)."""
    present, inverse = np.unique(class_ids, return_inverse=True)
    known = np.array([_name(int(i), names) for i in present] + [""], dtype=object)
    return {
        "class_id": class_ids.astype(np.int64),
        "class_name": known[inverse.reshape(-1)],
        "area": shapely.area(geoms),
    }


def _name(class_id: int, names: tuple[str, ...]) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class_{class_id}"
