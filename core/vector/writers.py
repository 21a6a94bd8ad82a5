"""Vector files of class polygons: GeoPackage, GeoJSON or GeoParquet, picked by extension.

:func:`write_polygons` writes what :func:`seamline.core.vector.polygonize.polygonize` gives,
atomically. A GeoPackage is streamed window by window as the engine
(:mod:`seamline.core.vector.seams`) completes polygons, through
:class:`seamline.core.vector.gpkg.GeoPackageWriter`; :func:`vector_format` checks an output
path early, before any work.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from seamline.core.data.files import atomic_path, check_output_path
from seamline.core.errors import InvalidArgumentError
from seamline.core.vector.gpkg import GeoPackageWriter
from seamline.core.vector.polygonize import attribute_columns, collect, polygon_frame, prepare
from seamline.core.vector.seams import Batch, polygon_batches

# No geopandas at import time: `seamline vectorize` writes a GeoPackage with sqlite3, and
# geopandas would be most of its memory. GeoJSON and GeoParquet import it when they are written.
if TYPE_CHECKING:
    import geopandas as gpd

    from seamline.core.vector.class_raster import Classes

__all__ = ["write_polygons", "vector_format", "VECTOR_FORMATS"]

VECTOR_FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".parquet": "GeoParquet"}
"""Output formats by file extension."""

COLUMNS = {"class_id": "i", "class_name": "O", "area": "f"}  # the attributes, in order


def vector_format(path: str | os.PathLike) -> str:
    """The output format of ``path`` by its extension; fails early if it cannot be written."""
    path = Path(path)
    fmt = VECTOR_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidArgumentError(
            f"Output {str(path)!r} has an unsupported format {path.suffix or '(no extension)'!r}:"
            f" name it {', '.join(VECTOR_FORMATS)} (GeoPackage, GeoJSON or GeoParquet)."
        )
    if fmt == "GeoParquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidArgumentError(
                f"Writing GeoParquet ({str(path)!r}) needs the pyarrow package: install it "
                "(pip install pyarrow) or write a .gpkg."
            ) from None
    check_output_path(path)
    return fmt


def write_polygons(
    classes: Classes,
    path: str | os.PathLike,
    *,
    classes_to_keep: Sequence[int | str] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = 4,
    window: int | None = None,
    background: int | str | None = None,
) -> dict:
    """Polygonize ``classes`` (see :func:`seamline.core.vector.polygonize.polygonize`) into a
    vector file, atomically.

    The format follows the extension (:data:`VECTOR_FORMATS`). A GeoPackage without
    ``simplify`` is written window by window as the polygons are completed (by
    :class:`seamline.core.vector.gpkg.GeoPackageWriter`), so memory does not grow with the
    raster; GeoJSON, GeoParquet and simplified output are written from memory at once, through
    geopandas.
    Returns a summary: output, format, polygon count per class name, window size, CRS.
    """
    fmt = vector_format(path)
    path = Path(path)
    counts: Counter[str] = Counter()
    with (
        prepare(
            classes, classes_to_keep, min_area, simplify, connectivity, window, background
        ) as (raster, options),
        atomic_path(path) as tmp,
    ):
        if fmt == "GPKG":
            if simplify == 0:
                batches: Iterator[Batch] = polygon_batches(raster, **options)
            else:
                batches = iter([collect(raster, options, simplify)])
            kind = "POLYGON" if connectivity == 4 else "MULTIPOLYGON"
            with GeoPackageWriter(tmp, path.stem, kind, raster.crs, COLUMNS) as out:
                for geoms, class_ids in batches:
                    columns = attribute_columns(geoms, class_ids, raster.names)
                    out.write(geoms, **columns)
                    counts.update(columns["class_name"].tolist())
        else:
            frame = polygon_frame(*collect(raster, options, simplify), raster)
            _write_frame(frame, fmt, tmp, path, connectivity)
            counts.update(frame["class_name"].tolist())
    return {
        "output": str(path),
        "format": fmt,
        "polygons": dict(sorted(counts.items())),
        "total_polygons": sum(counts.values()),
        "window": options["window"],
        "crs": raster.crs.to_string(),
    }


def _write_frame(
    gdf: gpd.GeoDataFrame, fmt: str, tmp: Path, path: Path, connectivity: int
) -> None:
    """GeoJSON or GeoParquet through geopandas, into ``tmp``."""
    staging = tmp.with_name(tmp.name + path.suffix)  # GDAL checks the extension
    try:
        if fmt == "GeoParquet":
            gdf.to_parquet(staging)
        else:
            gdf.to_file(
                staging,
                driver=fmt,
                layer=path.stem,
                geometry_type="Polygon" if connectivity == 4 else "MultiPolygon",
                promote_to_multi=connectivity == 8,
            )
        os.replace(staging, tmp)
    finally:
        staging.unlink(missing_ok=True)
