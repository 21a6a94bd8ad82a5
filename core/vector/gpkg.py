"""A streaming GeoPackage writer on the standard library's ``sqlite3``.

Why not GDAL through pyogrio or fiona, as :meth:`geopandas.GeoDataFrame.to_file` does:
importing pyogrio loads a second GDAL beside rasterio's, plus pandas, geopandas and pyproj,
82 MB of resident memory before a single polygon (measured: 52 MB for rasterio + shapely,
134 MB with pyogrio). That is more than ``seamline vectorize`` needs for its whole work on a
2048-pixel window, and the difference between meeting and missing its memory aim (issue #9).
A GeoPackage is by design (OGC 12-128r18) an SQLite database: three metadata tables and one
feature table whose geometries are WKB behind a short header. ``sqlite3`` writes the tables
and :func:`shapely.to_wkb` the geometries, so this module only lays out what the standard
prescribes (version 1.2, which GDAL 3.6 and the QGIS of Debian 12 read without a warning).
It writes no spatial index (optional in the standard; GDAL adds one on request:
``ogrinfo FILE -sql "SELECT CreateSpatialIndex('layer', 'geom')"``).
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

import numpy as np
import shapely

if TYPE_CHECKING:
    from rasterio.crs import CRS

__all__ = ["GeoPackageWriter"]

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10200  # GeoPackage 1.2
UNDEFINED_SRS_ID = 100000  # first srs_id free for a CRS without an EPSG code
COLUMN_TYPES = {"i": "INTEGER", "u": "INTEGER", "f": "REAL", "O": "TEXT", "U": "TEXT"}

# The geometry header (GeoPackage binary, standard 2.1.3): magic, version 0, flags, srs_id,
# envelope [minx, maxx, miny, maxy]. Flags 0b011: little-endian, envelope of 4 doubles.
HEADER = np.dtype(
    [("magic", "S2"), ("version", "u1"), ("flags", "u1"), ("srs_id", "<i4"), ("env", "<f8", 4)]
)

SCHEMA = """
CREATE TABLE gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
"""


class GeoPackageWriter:
    """Write one layer of polygons into a new GeoPackage, batch by batch, in one transaction.

    Use as a context manager: the file is complete (extent recorded, committed) when the
    block ends without an error; after an error it is left unfinished for the caller to
    delete (:func:`seamline.core.data.files.atomic_path` does).

    Parameters
    ----------
    path
        The file to create (it must not hold a database already).
    layer
        The table's name.
    geometry_type
        ``"POLYGON"`` or ``"MULTIPOLYGON"`` (polygons are then written as one-part
        MultiPolygons, as GDAL's ``promote_to_multi`` does).
    crs
        The CRS of the coordinates (a rasterio CRS); EPSG codes are recorded as such.
    columns
        Attribute names and numpy dtype kinds (``"i"``, ``"f"``, ``"O"`` for text), in order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layer: str,
        geometry_type: str,
        crs: CRS,
        columns: dict[str, str],
    ) -> None:
        if geometry_type not in ("POLYGON", "MULTIPOLYGON"):
            raise ValueError(f"geometry_type must be POLYGON or MULTIPOLYGON, not {geometry_type}")
        self.layer, self.multi, self.columns = layer, geometry_type == "MULTIPOLYGON", columns
        code = crs.to_epsg()
        self.srs_id = code if code is not None else UNDEFINED_SRS_ID
        self.bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self.db.execute(f"PRAGMA user_version = {USER_VERSION}")
        self.db.executescript(SCHEMA)
        self.db.execute("BEGIN")
        self._create(geometry_type, crs)

    def _create(self, geometry_type: str, crs: CRS) -> None:
        from rasterio.crs import CRS

        srs = [
            ("Undefined cartesian SRS", -1, "NONE", -1, "undefined"),
            ("Undefined geographic SRS", 0, "NONE", 0, "undefined"),
            ("WGS 84 geodetic", 4326, "EPSG", 4326, CRS.from_epsg(4326).to_wkt()),
        ]
        if self.srs_id not in (-1, 0, 4326):
            organization = "NONE" if self.srs_id == UNDEFINED_SRS_ID else "EPSG"
            name = crs.to_dict().get("name") or crs.to_string() or "unnamed"
            srs.append((name, self.srs_id, organization, self.srs_id, crs.to_wkt()))
        self.db.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, NULL)", srs)
        self.db.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id)"
            " VALUES (?, 'features', ?, ?)",
            (self.layer, self.layer, self.srs_id),
        )
        self.db.execute(
            "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)",
            (self.layer, geometry_type, self.srs_id),
        )
        fields = "".join(f', "{name}" {COLUMN_TYPES[kind]}' for name, kind in self.columns.items())
        self.db.execute(
            f'CREATE TABLE "{self.layer}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,'
            f" geom {geometry_type}{fields})"
        )
        names = ", ".join(f'"{name}"' for name in self.columns)
        marks = ", ".join("?" * (len(self.columns) + 1))
        self.insert = f'INSERT INTO "{self.layer}" (geom, {names}) VALUES ({marks})'

    def write(self, geoms: np.ndarray, **values: np.ndarray) -> None:
        """Append polygons (a shapely array) with one value per polygon for each column."""
        if not len(geoms):
            return
        if self.multi:
            parts, index = shapely.get_parts(geoms, return_index=True)
            geoms = shapely.multipolygons(parts, indices=index)
        bounds = shapely.bounds(geoms)
        self.bounds = np.r_[
            np.minimum(self.bounds[:2], bounds[:, :2].min(0)),
            np.maximum(self.bounds[2:], bounds[:, 2:].max(0)),
        ]
        header = np.zeros(len(geoms), HEADER)
        header["magic"], header["flags"], header["srs_id"] = b"GP", 0b011, self.srs_id
        header["env"] = bounds[:, [0, 2, 1, 3]]
        blobs = map(bytes.__add__, (h.tobytes() for h in header), shapely.to_wkb(geoms))
        columns = [values[name].tolist() for name in self.columns]
        self.db.executemany(self.insert, zip(blobs, *columns, strict=True))

    def __enter__(self) -> GeoPackageWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        try:
            if kind is None:
                extent = self.bounds.tolist() if np.isfinite(self.bounds).all() else [None] * 4
                self.db.execute(
                    "UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?,"
                    " last_change = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE table_name = ?",
                    (*extent, self.layer),
                )
                self.db.execute("COMMIT")
        finally:
            self.db.close()
