import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.mask
from shapely.geometry import Polygon, box

from seamline.core.data.io import open_raster, valid_mask
from seamline.core.errors import (
    GeometryError,
    InvalidArgumentError,
    InvalidCRSError,
    MissingCRSError,
    NoDataError,
)
from seamline.core.prepare.bandstats import fit_band_stats
from seamline.core.prepare.scene import parse_crs, parse_resampling, prepare

# An irregular AOI inside the Landsat scene's valid footprint, given in EPSG:4326 as users do.
LANDSAT_AOI_UTM = Polygon(
    [(150000, 2700000), (250000, 2650000), (300000, 2780000), (180000, 2800000)]
)


def _aoi_4326(crs, polygon=LANDSAT_AOI_UTM):
    return gpd.GeoDataFrame(geometry=[polygon], crs=crs).to_crs("EPSG:4326")


@pytest.mark.parametrize("all_touched", [False, True])
def test_prepare_matches_seed_recipe_on_real_landsat(shared_data, all_touched):
    path = shared_data / "landsat" / "RGB.byte.tif"
    with rasterio.open(path) as src:
        aoi = _aoi_4326(src.crs)
        shapes = aoi.to_crs(src.crs).geometry  # the seed recipe: gdf.to_crs(src.crs)
        ref, ref_transform = rasterio.mask.mask(src, shapes, crop=True, all_touched=all_touched)
        src_transform = src.transform
    out = prepare(open_raster(path), aoi=aoi, all_touched=all_touched)

    # Same pixel grid as the source: same pixel size, origin shifted by whole pixels.
    t = out.rio.transform()
    assert (t.a, t.e) == (src_transform.a, src_transform.e)
    col, row = ~src_transform @ (t.c, t.f)
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6

    # Same valid pixels and values, placed in source-grid coordinates.
    ref_col, ref_row = (round(v) for v in ~src_transform @ (ref_transform.c, ref_transform.f))
    rows, cols = np.nonzero((ref != 0).any(axis=0))
    mine_rows, mine_cols = np.nonzero(valid_mask(out))
    assert len(rows) > 10_000
    np.testing.assert_array_equal(
        np.sort((rows + ref_row) * 10_000 + cols + ref_col),
        np.sort((mine_rows + round(row)) * 10_000 + mine_cols + round(col)),
    )
    ref_values = ref[:, rows, cols]
    shift_r, shift_c = ref_row - round(row), ref_col - round(col)
    np.testing.assert_array_equal(out.values[:, rows + shift_r, cols + shift_c], ref_values)
    # The crops may differ only by empty border rows/columns.
    assert abs(out.shape[1] - ref.shape[1]) <= 2 and abs(out.shape[2] - ref.shape[2]) <= 2


def test_all_touched_keeps_more_pixels(small_tif, small_aoi):
    aoi = gpd.read_file(small_aoi)
    centre = valid_mask(prepare(open_raster(small_tif), aoi=aoi)).sum()
    touched = valid_mask(prepare(open_raster(small_tif), aoi=aoi, all_touched=True)).sum()
    assert touched > centre


def test_prepare_with_stats_outputs_normalised_float(small_tif, small_aoi):
    scene = open_raster(small_tif)
    stats = fit_band_stats(scene)
    out = prepare(scene, aoi=gpd.read_file(small_aoi), stats=stats)
    assert out.dtype == np.float32
    assert np.isnan(out.rio.nodata)
    finite = np.isfinite(out.values)
    assert finite.any() and (~finite).any()
    assert np.abs(np.nanmean(out.values)) < 0.5


def test_reproject_real_web_mercator_raster_to_utm(shared_data):
    path = shared_data / "landsat" / "rgb1_fake_nir_epsg3857.tif"
    scene = open_raster(path)
    out = prepare(scene, dst_crs="EPSG:32618", resolution=300, resampling="bilinear")
    assert out.rio.crs.to_epsg() == 32618
    assert out.rio.resolution() == (300.0, -300.0)
    assert valid_mask(out).mean() > 0.3


def test_reproject_with_aoi_crops_before_warping(small_tif, small_aoi):
    out = prepare(open_raster(small_tif), aoi=gpd.read_file(small_aoi), dst_crs="EPSG:3857")
    assert out.rio.crs.to_epsg() == 3857
    assert out.sizes["x"] < 80 and valid_mask(out).any()


def test_aoi_outside_raster(small_tif):
    far = gpd.GeoDataFrame(geometry=[box(20, 10, 21, 11)], crs="EPSG:4326")
    with pytest.raises(GeometryError, match="does not overlap the raster"):
        prepare(open_raster(small_tif), aoi=far)


def test_aoi_over_nodata_only(small_tif):
    # rows 0-4 of the fixture are nodata: an AOI inside them has no valid pixel.
    collar = gpd.GeoDataFrame(geometry=[box(500100, 4999960, 500300, 4999990)], crs="EPSG:32633")
    with pytest.raises(NoDataError, match="no valid pixels inside the AOI"):
        prepare(open_raster(small_tif), aoi=collar)


def test_raster_without_crs(small_tif):
    scene = open_raster(small_tif)
    scene = scene.drop_vars("spatial_ref")
    with pytest.raises(MissingCRSError, match="has no CRS"):
        prepare(scene)


def test_parse_errors_name_the_input():
    with pytest.raises(InvalidCRSError, match="EPSG:99999999"):
        parse_crs("EPSG:99999999")
    with pytest.raises(InvalidArgumentError, match="Did you mean 'bilinear'"):
        parse_resampling("bilinaer")


def test_a_signed_raster_without_nodata_keeps_its_zeros(tmp_path):
    """int16 without a nodata value: 0 is data (elevation, backscatter), not a hole."""
    from seamline.core.prepare.scene import prepare_file
    from tests.conftest import write_tif

    data = np.random.default_rng(0).integers(-500, 3000, (2, 60, 80)).astype("int16")
    data[:, :20] = 0  # 3,200 valid zeros
    source = write_tif(tmp_path / "dem.tif", data, nodata=None)
    out = tmp_path / "prepared.tif"
    prepare_file(source, out, fit_stats=tmp_path / "stats.json")
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read()).all()
