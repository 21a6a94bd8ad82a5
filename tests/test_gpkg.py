"""The sqlite3 GeoPackage writer: what GDAL (geopandas/pyogrio, ogrinfo) reads back."""

import shutil
import sqlite3
import subprocess

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.crs import CRS

from seamline.core.vector.gpkg import GeoPackageWriter

COLUMNS = {"class_id": "i", "class_name": "O", "area": "f"}
# A transverse Mercator that no EPSG code names: it is recorded by its WKT alone.
CUSTOM = CRS.from_proj4("+proj=tmerc +lon_0=17 +k=0.9996 +x_0=500000 +ellps=GRS80 +units=m")


def polygons() -> np.ndarray:
    """Squares in two batches, one with a hole, and a two-part MultiPolygon."""
    squares = shapely.box(np.arange(6) * 20.0 + 1000, 5000, np.arange(6) * 20.0 + 1010, 5010)
    squares[1] = squares[1].difference(shapely.box(1022, 5002, 1024, 5004))
    squares[5] = shapely.union(squares[5], shapely.box(1200, 5020, 1210, 5030))
    return squares


def write(path, geoms, geometry_type, crs, batches=2):
    with GeoPackageWriter(path, "fields", geometry_type, crs, COLUMNS) as out:
        for part in np.array_split(np.arange(len(geoms)), batches):
            out.write(
                geoms[part],
                class_id=part,
                class_name=np.array([f"c{i}" for i in part], dtype=object),
                area=shapely.area(geoms[part]),
            )


@pytest.mark.parametrize("crs", [CRS.from_epsg(32633), CUSTOM])
def test_batches_read_back_in_gdal_with_attributes_crs_and_extent(tmp_path, crs):
    geoms = polygons()
    out = tmp_path / "fields.gpkg"
    write(out, geoms, "MULTIPOLYGON", crs, batches=3)
    back = gpd.read_file(out)
    assert list(back.columns) == ["class_id", "class_name", "area", "geometry"]
    assert back.crs.to_epsg() == crs.to_epsg() and back.crs.equals(crs.to_wkt())
    assert (back.geom_type == "MultiPolygon").all()  # promoted, as GDAL's promote_to_multi
    assert shapely.equals(back.geometry.to_numpy(), geoms).all()
    assert back["class_id"].tolist() == list(range(len(geoms)))
    assert back["class_name"].tolist() == [f"c{i}" for i in range(len(geoms))]
    np.testing.assert_array_equal(back["area"], shapely.area(geoms))
    with sqlite3.connect(out) as db:
        extent = db.execute("SELECT min_x, min_y, max_x, max_y FROM gpkg_contents").fetchone()
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
    np.testing.assert_array_equal(extent, shapely.total_bounds(geoms))


def test_polygon_layer_and_an_empty_batch(tmp_path):
    geoms = polygons()[:5]  # Polygons only
    out = tmp_path / "fields.gpkg"
    with GeoPackageWriter(out, "fields", "POLYGON", CRS.from_epsg(32633), {"class_id": "i"}) as w:
        w.write(geoms[:0], class_id=np.zeros(0, int))
        w.write(geoms, class_id=np.arange(5))
    back = gpd.read_file(out)
    assert (back.geom_type == "Polygon").all() and back.crs == "EPSG:32633"
    assert shapely.equals_exact(back.geometry.to_numpy(), geoms, 0).all()


def test_an_empty_layer_is_a_valid_file(tmp_path):
    out = tmp_path / "none.gpkg"
    write(out, polygons()[:0], "POLYGON", CRS.from_epsg(32633), batches=1)
    back = gpd.read_file(out)
    assert len(back) == 0 and back.crs == "EPSG:32633"


def test_ogrinfo_reads_it_without_a_warning(tmp_path):
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        pytest.skip("ogrinfo (gdal-bin) is not installed")
    out = tmp_path / "fields.gpkg"
    write(out, polygons(), "MULTIPOLYGON", CUSTOM)
    proc = subprocess.run([ogrinfo, "-al", str(out)], capture_output=True, text=True, check=True)
    assert "Warning" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    assert "Geometry: Multi Polygon" in proc.stdout and "Feature Count: 6" in proc.stdout
    assert 'PARAMETER["Longitude of natural origin",17' in proc.stdout
    assert "class_name (String) = c5" in proc.stdout


def test_a_geometry_type_other_than_polygons_is_refused(tmp_path):
    with pytest.raises(ValueError, match="POLYGON or MULTIPOLYGON"):
        GeoPackageWriter(tmp_path / "x.gpkg", "x", "POINT", CRS.from_epsg(4326), {})
