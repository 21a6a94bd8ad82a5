"""Class polygons: components, areas, masks, seams (windowed == whole), files and bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import seamline.core.vector.polygonize as vectorize
import seamline.core.vector.seams as seams
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import CLASSES, make_scene
from seamline.core.errors import BandMismatchError, InvalidArgumentError, MissingCRSError
from seamline.core.vector.gpkg import GeoPackageWriter
from seamline.core.vector.polygonize import polygonize
from seamline.core.vector.writers import write_polygons
from tests.conftest import write_tif

ROOT = Path(__file__).resolve().parents[1]
NODATA = 255
TRANSFORM = Affine(10, 0, 500000, 0, -20, 5000000)  # 10 x 20 m pixels: area is not x^2
PIXEL_AREA = 200.0
WINDOWS = [7, 16, 33]
NAMES = ("water", "field", "road", "roof")


def class_array(values: np.ndarray, *, names=NAMES, crs="EPSG:32633") -> xr.DataArray:
    """A (y, x) uint8 class DataArray on TRANSFORM, nodata 255, like predict_scene's."""
    h, w = values.shape
    da = xr.DataArray(
        values.astype(np.uint8),
        dims=("y", "x"),
        coords={
            "y": TRANSFORM.f + TRANSFORM.e * (np.arange(h) + 0.5),
            "x": TRANSFORM.c + TRANSFORM.a * (np.arange(w) + 0.5),
        },
        attrs={"classes": list(names)} if names else {},
        name="classes",
    )
    if crs:
        da.rio.write_crs(crs, inplace=True)
    da.rio.write_transform(TRANSFORM, inplace=True)
    return da.rio.write_nodata(NODATA, encoded=False)


def known_shapes() -> np.ndarray:
    """96 x 110 classes: seam-crossing blocks, a ring with an island, a snake, diagonals,
    nodata and speckle.

    Background is class 1 (field). Windows 7, 16 and 33 cut every shape below.
    """
    rng = np.random.default_rng(7)
    a = np.ones((96, 110), np.uint8)
    a[10:40, 10:40] = 0  # crosses seams both ways and the corners (14,14), (16,16), (33,33)
    a[45:75, 45:75] = 3  # a ring of roof ...
    a[50:70, 50:70] = 1  # ... with a hole of field ...
    a[58:61, 58:62] = 2  # ... holding an island of road
    idx = np.arange(0, 45)
    a[idx, idx + 5] = 2  # a one-pixel diagonal line: corners only (splits the water with 4)
    a[80:96, 0:30] = NODATA  # nodata cutting the border and a shape
    a[12:20, 25:30] = NODATA  # a nodata hole inside the block of water
    a[2:38:10, 60:101] = 3  # a snake of roof: four bars joined at alternate ends, so it
    a[2:13, 100] = a[12:23, 60] = a[22:33, 100] = 3  # turns up and down across window rows
    noisy = rng.integers(0, 4, size=(20, 30))
    a[76:96, 75:105] = noisy  # speckle: many small components, diagonal contacts
    return a


def components(values: np.ndarray, connectivity: int):
    """Per class: scipy's labels and count, with the same connectivity."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    return {c: ndimage.label(values == c, structure) for c in np.unique(values) if c != NODATA}


def sorted_frame(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    geoms = shapely.normalize(gdf.geometry.to_numpy())
    order = np.lexsort((shapely.to_wkb(geoms), gdf["class_id"].to_numpy()))
    return gdf.assign(geometry=geoms).iloc[order].reset_index(drop=True)


def assert_same_polygons(got: gpd.GeoDataFrame, want: gpd.GeoDataFrame):
    got, want = sorted_frame(got), sorted_frame(want)
    assert len(got) == len(want)
    assert (got["class_id"].to_numpy() == want["class_id"].to_numpy()).all()
    assert (got["class_name"].to_numpy() == want["class_name"].to_numpy()).all()
    assert shapely.equals(got.geometry.to_numpy(), want.geometry.to_numpy()).all()
    np.testing.assert_allclose(got["area"], want["area"])


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("window", [None, *WINDOWS])
def test_one_polygon_per_component_with_its_exact_area(window, connectivity):
    values = known_shapes()
    gdf = polygonize(class_array(values), window=window, connectivity=connectivity)
    assert list(gdf.columns) == ["class_id", "class_name", "area", "geometry"]
    assert gdf.crs == "EPSG:32633" and gdf.is_valid.all()
    assert set(gdf.geom_type) <= {"Polygon", "MultiPolygon"}
    tree = shapely.STRtree(gdf.geometry.to_numpy())
    for c, (labels, count) in components(values, connectivity).items():
        mine = gdf[gdf["class_id"] == c]
        assert len(mine) == count
        assert (mine["class_name"] == NAMES[c]).all()
        # the first pixel of each component lies in exactly one polygon, of the same class
        ids, first = np.unique(labels.ravel(), return_index=True)
        ids, first = ids[1:], first[1:]
        rows, cols = np.unravel_index(first, labels.shape)
        xs, ys = rasterio.transform.xy(TRANSFORM, rows, cols)  # pixel centres
        point_i, poly_i = tree.query(shapely.points(xs, ys), predicate="within")
        hit = gdf["class_id"].to_numpy()[poly_i] == c
        point_i, poly_i = point_i[hit], poly_i[hit]
        assert np.array_equal(point_i, np.arange(count))  # one polygon per component ...
        assert len(np.unique(poly_i)) == count  # ... each its own
        pixels = np.bincount(labels.ravel())[ids]
        np.testing.assert_allclose(gdf["area"].to_numpy()[poly_i], pixels * PIXEL_AREA)
        np.testing.assert_allclose(
            shapely.area(gdf.geometry.to_numpy()[poly_i]), pixels * PIXEL_AREA
        )


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("window", [None, *WINDOWS])
def test_union_per_class_is_the_class_mask(window, connectivity):
    values = known_shapes()
    gdf = polygonize(class_array(values), window=window, connectivity=connectivity)
    for c in components(values, connectivity):
        geoms = gdf.geometry[gdf["class_id"] == c]
        burnt = rasterize(geoms, out_shape=values.shape, transform=TRANSFORM, dtype=np.uint8)
        assert np.array_equal(burnt == 1, values == c)
        # and the polygons do not overlap: their areas add up to the mask's
        assert gdf["area"][gdf["class_id"] == c].sum() == pytest.approx(
            (values == c).sum() * PIXEL_AREA
        )
    assert not (
        rasterize(gdf.geometry, out_shape=values.shape, transform=TRANSFORM)[values == NODATA]
    ).any()


@pytest.mark.parametrize(
    "options",
    [{}, {"min_area": 2000.0}, {"simplify": 15.0}, {"connectivity": 8, "min_area": 1000.0}],
)
@pytest.mark.parametrize("window", WINDOWS)
def test_windowed_equals_whole_raster(window, options):
    da = class_array(known_shapes())
    whole = polygonize(da, **options)
    windowed = polygonize(da, window=window, **options)
    assert_same_polygons(windowed, whole)
    # identical, not only equal: same rows in the same order with the same coordinates
    assert shapely.equals_exact(windowed.geometry.to_numpy(), whole.geometry.to_numpy(), 0).all()


def test_diagonal_contact_across_a_window_corner_joins_only_with_8_connectivity():
    values = np.full((8, 8), 1, np.uint8)
    values[3, 3] = values[4, 4] = 2  # meet at the corner point (4, 4) of a 4-pixel window
    for window in (None, 4):
        four = polygonize(class_array(values), connectivity=4, window=window)
        eight = polygonize(class_array(values), connectivity=8, window=window)
        assert (four["class_id"] == 2).sum() == 2
        roads = eight[eight["class_id"] == 2]
        assert len(roads) == 1 and roads.geom_type.iloc[0] == "MultiPolygon"
        assert roads["area"].iloc[0] == 2 * PIXEL_AREA


def test_holes_are_kept_and_min_area_fills_small_ones_and_drops_small_polygons():
    values = known_shapes()
    da = class_array(values)
    on_ring = shapely.Point(rasterio.transform.xy(TRANSFORM, 46, 46))
    island = shapely.Point(rasterio.transform.xy(TRANSFORM, 59, 60))

    def roof_ring(gdf):
        (found,) = np.flatnonzero(gdf.contains(on_ring) & (gdf["class_id"] == 3))
        return gdf.iloc[found]

    ring = roof_ring(polygonize(da, window=16))
    assert len(ring.geometry.interiors) == 1 and ring["area"] == (900 - 400) * PIXEL_AREA
    hole_area = 20 * 20 * PIXEL_AREA
    filled = polygonize(da, min_area=hole_area + 1, window=16)
    ring = roof_ring(filled)
    assert len(ring.geometry.interiors) == 0
    assert ring["area"] == 30 * 30 * PIXEL_AREA  # the hole and its island, taken in
    assert (filled["area"] >= hole_area + 1).all()
    assert filled.contains(island).sum() == 1  # only the roof, not the dropped road island
    kept = polygonize(da, min_area=hole_area - 1)  # the hole is larger: it stays
    assert len(roof_ring(kept).geometry.interiors) == 1
    # the hole's field (388 px) and road island (12 px) are both too small: the hole, larger
    # than min_area, stays empty (no sieve-like reassignment of a patch to its neighbour)
    assert kept.contains(island).sum() == 0


def test_simplify_keeps_neighbours_shared_and_reduces_vertices():
    _, labels = make_scene(128, 128, seed=3)
    exact = polygonize(labels)
    simple = polygonize(labels, simplify=25.0, window=33)
    assert len(simple) == len(exact) and simple.is_valid.all()
    vertices = shapely.get_num_coordinates
    assert vertices(simple.geometry.to_numpy()).sum() < vertices(exact.geometry.to_numpy()).sum()
    # a coverage: no gaps or overlaps appear between neighbours
    union = shapely.union_all(simple.geometry.to_numpy())
    assert union.area == pytest.approx(simple["area"].sum())
    assert union.area == pytest.approx(shapely.union_all(exact.geometry.to_numpy()).area)


def test_class_selection_background_and_nodata():
    values = known_shapes()
    da = class_array(values)
    everything = polygonize(da)
    assert set(everything["class_id"]) == {0, 1, 2, 3}
    roads = polygonize(da, classes_to_keep=["road", 0])
    assert set(roads["class_id"]) == {0, 2}
    no_field = polygonize(da, background="field")
    assert set(no_field["class_id"]) == {0, 2, 3}
    assert len(no_field) == len(everything) - (everything["class_id"] == 1).sum()
    with pytest.raises(InvalidArgumentError, match="did you mean 'road'"):
        polygonize(da, classes_to_keep=["raod"])
    with pytest.raises(InvalidArgumentError, match="give class ids"):
        polygonize(class_array(values, names=()), classes_to_keep=["road"])
    unnamed = polygonize(class_array(values, names=()))
    assert set(unnamed["class_name"]) == {f"class_{c}" for c in range(4)}
    empty = polygonize(class_array(np.full((20, 20), NODATA)), window=7)
    assert len(empty) == 0 and list(empty.columns) == ["class_id", "class_name", "area", "geometry"]


def test_a_class_geotiff_names_its_classes_and_large_files_go_window_by_window(
    tmp_path, monkeypatch
):
    _, labels = make_scene(100, 90, seed=5)
    path = write_raster(labels, tmp_path / "labels.tif")
    monkeypatch.setattr(vectorize, "AUTO_WINDOW_PIXELS", 50 * 50)
    monkeypatch.setattr(vectorize, "DEFAULT_WINDOW", 16)
    report = write_polygons(path, tmp_path / "auto.gpkg")
    assert report["window"] == 16
    from_file = polygonize(path)
    assert_same_polygons(from_file, polygonize(labels, window=None))
    assert set(from_file["class_name"]) <= set(CLASSES) and len(from_file) > 5


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_written_file_reads_back_with_its_crs_and_overlays_the_raster(tmp_path, suffix):
    da = class_array(known_shapes())
    out = tmp_path / f"polygons{suffix}"
    report = write_polygons(da, out, window=16)
    back = gpd.read_file(out)
    assert back.crs == "EPSG:32633"
    expected = polygonize(da)
    assert report["total_polygons"] == len(expected) == len(back)
    assert report["polygons"] == expected["class_name"].value_counts().to_dict()
    assert_same_polygons(back, expected)
    left, bottom, right, top = rasterio.transform.array_bounds(*da.shape, TRANSFORM)
    np.testing.assert_allclose(back.total_bounds, [left, bottom, right, top])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no staging file left


def test_geopackage_opens_in_ogrinfo(tmp_path):
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        pytest.skip("ogrinfo (gdal-bin) is not installed")
    da = class_array(known_shapes())
    out = tmp_path / "polygons.gpkg"
    write_polygons(da, out, window=33)
    proc = subprocess.run(
        [ogrinfo, "-so", "-al", str(out)], capture_output=True, text=True, check=True
    )
    assert "Warning" not in proc.stderr, proc.stderr
    info = proc.stdout
    assert f"Feature Count: {len(polygonize(da))}" in info
    assert 'ID["EPSG",32633]' in info
    left, bottom, right, top = rasterio.transform.array_bounds(*da.shape, TRANSFORM)
    assert f"Extent: ({left:.6f}, {bottom:.6f}) - ({right:.6f}, {top:.6f})" in info


def test_geoparquet_needs_pyarrow_or_round_trips(tmp_path):
    da = class_array(known_shapes())
    out = tmp_path / "polygons.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidArgumentError, match="pip install pyarrow"):
            write_polygons(da, out)
        assert not out.exists()
        return
    write_polygons(da, out, window=16)
    assert_same_polygons(gpd.read_parquet(out), polygonize(da))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_a_class_geotiff_streamed_into_a_geopackage_equals_the_whole_raster(
    tmp_path, connectivity
):
    da = class_array(known_shapes())
    src = write_raster(da, tmp_path / "classes.tif")
    out = tmp_path / "polygons.gpkg"
    options = {"connectivity": connectivity, "min_area": 1000.0}
    report = write_polygons(src, out, window=16, **options)  # read and written per window
    expected = polygonize(da, **options)  # in memory, at once
    back = gpd.read_file(out)
    assert report["total_polygons"] == len(back) == len(expected) > 20
    assert back.crs == "EPSG:32633"
    assert_same_polygons(back, expected)


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.int16])
def test_any_integer_dtype_gives_the_same_polygons(dtype):
    values = known_shapes()
    expected = polygonize(class_array(values), window=16)
    assert_same_polygons(polygonize(class_array(values).astype(dtype), window=16), expected)
    with pytest.raises(InvalidArgumentError, match="32 bits"):
        polygonize(class_array(values).astype(np.int64) + 2**40)


def test_seam_groups_are_the_connected_components_scipy_finds():
    rng = np.random.default_rng(3)
    graphs = [(n, rng.integers(0, n, (int(rng.integers(0, 2 * n)), 2))) for n in range(1, 300, 7)]
    path = rng.permutation(500)  # a long path through shuffled nodes: many rounds of hooking
    graphs += [(500, np.column_stack([path[:-1], path[1:]])), (3, np.zeros((0, 2), int))]
    for n, edges in graphs:
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), (n, n))
        count, labels = connected_components(graph, directed=False)
        smallest = np.full(count, n)
        np.minimum.at(smallest, labels, np.arange(n))
        assert np.array_equal(seams._smallest_connected(n, edges), smallest[labels])


def test_the_vectorize_command_imports_no_xarray_geopandas_or_scipy(tmp_path):
    """Issue #9's memory aim rests on it: those imports alone are 100 MB of RSS."""
    src = write_tif(tmp_path / "classes.tif", known_shapes()[None], nodata=NODATA)
    code = (
        "import sys; from seamline.app.cli import main; main(sys.argv[1:]); "
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)"
    )
    argv = ["vectorize", str(src), str(tmp_path / "out.gpkg"), "--window", "32"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(proc.stdout)["total_polygons"] > 20
    heavy = {"xarray", "rioxarray", "geopandas", "pandas", "pyogrio", "pyproj", "scipy", "dask"}
    assert not heavy & set(proc.stderr.split())


def test_bad_input_is_one_clear_error_and_no_file(tmp_path):
    probabilities = xr.DataArray(
        np.random.default_rng(0).random((4, 10, 10), np.float32), dims=("class", "y", "x")
    )
    with pytest.raises(BandMismatchError, match="integer class ids"):
        polygonize(probabilities.rio.write_crs("EPSG:32633"))
    probs_tif = write_tif(tmp_path / "probs.tif", probabilities.values, nodata=None)
    no_crs = write_tif(tmp_path / "nocrs.tif", np.ones((1, 8, 8), np.uint8), crs=None)
    good = class_array(known_shapes())
    cases = [
        (probs_tif, tmp_path / "a.gpkg", BandMismatchError, "4 band(s)"),
        (no_crs, tmp_path / "b.gpkg", MissingCRSError, "has no CRS"),
        (good, tmp_path / "c.shp", InvalidArgumentError, "unsupported format '.shp'"),
        (good, tmp_path / "missing" / "d.gpkg", Exception, "does not exist"),
    ]
    for source, out, error, fragment in cases:
        with pytest.raises(error) as caught:
            write_polygons(source, out)
        assert fragment in str(caught.value) and "\n" not in str(caught.value)
        assert not out.exists()
    with pytest.raises(InvalidArgumentError, match="connectivity must be 4 or 8"):
        polygonize(good, connectivity=6)
    with pytest.raises(InvalidArgumentError, match="window must be"):
        polygonize(good, window=0)
    with pytest.raises(InvalidArgumentError, match="DataArray or the path"):
        polygonize(known_shapes())
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        polygonize(good, min_area=-1)
    assert set(tmp_path.iterdir()) == {probs_tif, no_crs}


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, suffix):
    written = []

    def fails_after_one_batch(self, *args, **kwargs):  # a GeoPackage is written in batches
        if written:
            raise OSError("disk full")
        written.append(real_write(self, *args, **kwargs))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    real_write = GeoPackageWriter.write
    monkeypatch.setattr(GeoPackageWriter, "write", fails_after_one_batch)
    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", broken)
    out = tmp_path / f"polygons{suffix}"
    with pytest.raises(OSError, match="disk full"):
        write_polygons(class_array(known_shapes()), out, window=16)
    assert list(tmp_path.iterdir()) == []
