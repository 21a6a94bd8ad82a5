from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Point, Polygon, box

from seamline.core.data.files import atomic_path
from seamline.core.data.io import (
    geotiff_bytes,
    open_aoi,
    open_raster,
    read_geotiff_bytes,
    valid_mask,
    write_raster,
)
from seamline.core.data.limits import InputBudget
from seamline.core.errors import (
    GeometryError,
    InputFileError,
    MissingCRSError,
    OutputPathError,
    SizeLimitError,
)


def test_open_raster_real_landsat(shared_data):
    path = shared_data / "landsat" / "RGB.byte.tif"
    da = open_raster(path)
    assert da.dims == ("band", "y", "x")
    assert da.shape == (3, 718, 791)
    assert da.rio.crs.to_epsg() == 32618
    assert da.rio.nodata == 0
    assert list(da["band"].values) == ["band_1", "band_2", "band_3"]
    with rasterio.open(path) as src:
        assert da.rio.transform() == src.transform
        expected = src.dataset_mask() > 0
    np.testing.assert_array_equal(valid_mask(da), expected)


def test_open_raster_reads_band_descriptions_and_can_chunk(small_tif):
    da = open_raster(small_tif)
    assert list(da["band"].values) == ["blue", "green", "red", "nir"]
    lazy = open_raster(small_tif, chunks={"x": 32, "y": 32})
    assert lazy.chunks is not None
    np.testing.assert_array_equal(lazy.values, da.values)


def test_open_raster_band_names_override_and_count_check(small_tif):
    da = open_raster(small_tif, band_names=["b", "g", "r", "n"])
    assert list(da["band"].values) == ["b", "g", "r", "n"]
    with pytest.raises(InputFileError, match="4 bands but 2 band names"):
        open_raster(small_tif, band_names=["a", "b"])


def test_open_raster_refuses_bands_only_some_of_which_are_described(tmp_path, small_tif):
    """Taking them in file order as band_1..N dropped the names given: a file whose bands
    are reordered and partly described was predicted with its bands mixed up."""
    path = tmp_path / "partly.tif"
    with rasterio.open(small_tif) as src:
        profile, values = src.profile, src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values[::-1])
        dst.descriptions = ("nir", "red", "green", None)
    with pytest.raises(InputFileError, match="describes some bands but not band 4: name every"):
        open_raster(path)
    named = open_raster(path, band_names=["nir", "red", "green", "blue"])
    np.testing.assert_array_equal(named.sel(band="blue").values, values[0])


def test_open_raster_netcdf(tmp_path, small_tif):
    da = open_raster(small_tif).isel(band=0).squeeze(drop=True)
    nc = tmp_path / "scene.nc"
    da.rename("blue").to_dataset().to_netcdf(nc)
    back = open_raster(nc)
    assert back.dims == ("band", "y", "x")
    assert back.rio.crs.to_epsg() == 32633
    assert back.rio.transform() == da.rio.transform()
    np.testing.assert_array_equal(back.values[0], da.values)


@pytest.mark.parametrize("name, content", [("missing.tif", None), ("bad.tif", b"not a tiff")])
def test_open_raster_bad_file_is_one_sentence(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError) as info:
        open_raster(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("driver", ["GTiff", "COG"])
def test_write_raster_round_trip_keeps_georeferencing(tmp_path, small_tif, driver):
    da = open_raster(small_tif)
    out = write_raster(da, tmp_path / f"out_{driver}.tif", driver=driver)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == da.rio.transform()
        assert src.nodata == 0
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert src.profile["tiled"]
        np.testing.assert_array_equal(src.read(), da.values)
        if driver == "COG":
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert not list(tmp_path.glob("*.part"))


def test_write_raster_missing_folder_leaves_nothing(tmp_path, small_tif):
    target = tmp_path / "nope" / "out.tif"
    with pytest.raises(OutputPathError, match="does not exist"):
        write_raster(open_raster(small_tif), target)
    assert not target.parent.exists()


def test_an_output_that_is_a_folder_or_cannot_be_written_is_one_sentence(tmp_path, small_tif):
    """Both raised OS errors from os.replace, after the work (root passes os.access)."""
    folder = tmp_path / "out.tif"
    folder.mkdir()
    with pytest.raises(OutputPathError, match="is a folder: give the path of a file"):
        write_raster(open_raster(small_tif), folder)
    with pytest.raises(OutputPathError, match="'/proc' cannot be written to"):
        write_raster(open_raster(small_tif), "/proc/seamline-out.tif")
    assert not list(tmp_path.glob(".*")) and not list(folder.iterdir())  # no probe, no part


def test_a_geographic_transform_is_written_exactly(tmp_path):
    """rioxarray recomputed it from the pixel centres: the service returned 0.0001 deg
    pixels as 9.999999999999682e-05 (an outside review)."""
    from rasterio.transform import from_origin

    from tests.conftest import write_tif

    transform = from_origin(12.3456, 45.6789, 0.0001, 0.0001)
    data = np.ones((2, 48, 64), dtype="uint16")
    source = write_tif(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=transform)
    scene = read_geotiff_bytes(source.read_bytes())
    with rasterio.MemoryFile(geotiff_bytes(scene)) as memory, memory.open() as back:
        assert back.transform == transform
    cropped = scene.isel(y=slice(5, None), x=slice(7, None))
    with rasterio.open(write_raster(cropped, tmp_path / "crop.tif")) as back:
        assert back.transform == transform * transform.translation(7, 5)


def test_class_names_are_tagged_as_json_as_predict_writes_them(tmp_path, small_tif):
    """In memory (serve-api's reply) they were the list's Python repr: another tool reading
    the tag as JSON failed on the quotes (an outside review)."""
    import json

    scene = open_raster(small_tif)
    scene.attrs["classes"] = ["water", "o'brien field"]
    with rasterio.MemoryFile(geotiff_bytes(scene)) as memory, memory.open() as back:
        assert json.loads(back.tags()["classes"]) == ["water", "o'brien field"]
    with rasterio.open(write_raster(scene, tmp_path / "tagged.tif")) as back:
        assert json.loads(back.tags()["classes"]) == ["water", "o'brien field"]


def test_atomic_path_removes_partial_file_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "suffix, driver", [(".geojson", "GeoJSON"), (".shp", "ESRI Shapefile"), (".gpkg", "GPKG")]
)
def test_open_aoi_formats(tmp_path, suffix, driver):
    gdf = gpd.GeoDataFrame(geometry=[box(10, 45, 11, 46)], crs="EPSG:4326")
    path = tmp_path / f"aoi{suffix}"
    gdf.to_file(path, driver=driver)
    aoi = open_aoi(path)
    assert aoi.crs.to_epsg() == 4326
    assert aoi.geometry.iloc[0].equals(box(10, 45, 11, 46))


def test_open_aoi_bad_inputs(tmp_path):
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    cases = {
        "invalid.geojson": (
            gpd.GeoDataFrame(geometry=[bowtie], crs=4326),
            GeometryError,
            "invalid polygon",
        ),
        "points.geojson": (
            gpd.GeoDataFrame(geometry=[Point(0, 0)], crs=4326),
            GeometryError,
            "must be polygons",
        ),
        "empty.geojson": (
            gpd.GeoDataFrame(geometry=[Polygon()], crs=4326),
            GeometryError,
            "no geometry",
        ),
        "nocrs.shp": (gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]), MissingCRSError, "no CRS"),
    }
    for name, (gdf, error, text) in cases.items():
        path = tmp_path / name
        gdf.to_file(path)
        with pytest.raises(error, match=text):
            open_aoi(path)
    with pytest.raises(InputFileError, match="does not exist"):
        open_aoi(tmp_path / "absent.geojson")
    (tmp_path / "junk.geojson").write_text("{ not json")
    with pytest.raises(InputFileError, match="could not be read"):
        open_aoi(tmp_path / "junk.geojson")


def test_valid_mask_any_band_semantics(tmp_path):
    from tests.conftest import write_tif

    data = np.ones((2, 3, 3), dtype=np.uint16)
    data[:, 0, 0] = 0  # all bands nodata -> invalid
    data[0, 1, 1] = 0  # one band zero -> still valid
    da = open_raster(write_tif(Path(tmp_path) / "m.tif", data))
    mask = valid_mask(da)
    assert not mask[0, 0] and mask[1, 1] and mask.sum() == 8


def test_geotiff_bytes_round_trip_in_memory(small_tif, tmp_path):
    scene = open_raster(small_tif).load()
    data = geotiff_bytes(scene)
    assert data[:4] == b"II*\x00"
    again = read_geotiff_bytes(data)
    assert again.rio.crs == scene.rio.crs and again.rio.transform() == scene.rio.transform()
    assert again.rio.nodata == 0 and list(again["band"].values) == ["blue", "green", "red", "nir"]
    np.testing.assert_array_equal(again.values, scene.values)
    assert [p.name for p in tmp_path.iterdir()] == ["small.tif"]  # nothing else written


def test_read_geotiff_bytes_refuses_what_is_not_a_bounded_geotiff(small_tif, tmp_path):
    with pytest.raises(InputFileError, match="empty"):
        read_geotiff_bytes(b"")
    with pytest.raises(InputFileError, match="not a GeoTIFF"):
        read_geotiff_bytes(b"\x89PNG garbage" * 10)
    png = tmp_path / "scene.png"
    with rasterio.open(small_tif) as src:
        with rasterio.open(png, "w", driver="PNG", width=src.width, height=src.height,
                           count=3, dtype="uint16", crs=src.crs, transform=src.transform) as dst:
            dst.write(src.read([1, 2, 3]))
    with pytest.raises(InputFileError, match="not a GeoTIFF"):
        read_geotiff_bytes(png.read_bytes())
    with pytest.raises(SizeLimitError, match="60 x 80|80 x 60"):
        read_geotiff_bytes(small_tif.read_bytes(), budget=InputBudget(max_pixels=80 * 60 * 4 - 1))
    fits = InputBudget(max_pixels=80 * 60 * 4)
    assert read_geotiff_bytes(small_tif.read_bytes(), budget=fits).shape == (4, 60, 80)
