"""Rotated geotransforms and rasters across the antimeridian (issue #19): outputs agree with
``rio warp`` and with the source pixels at the same ground position, and a reprojection that
would wrap around the world is one sentence."""

import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin, rowcol, xy
from shapely.geometry import box

from seamline.app.cli import main
from seamline.core.data.io import open_raster
from seamline.core.demo.synthetic import BANDS

RIO = shutil.which("rio", path=str(Path(sys.executable).parent))


def _raster(path, transform, crs="EPSG:32633", size=200):
    data = np.random.default_rng(0).integers(1, 3000, (len(BANDS), size, size), "uint16")
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=len(data),
                       dtype="uint16", crs=crs, transform=transform, nodata=0) as ds:  # fmt: skip
        ds.write(data)
        ds.descriptions = tuple(BANDS)
    return path


def _rotated(tmp_path, angle):
    transform = Affine.translation(500000, 4500000) * Affine.rotation(angle) * Affine.scale(10, -10)
    return _raster(tmp_path / f"rotated_{angle}.tif", transform)


def _aoi_at_centre(path, tmp_path, half=200.0):
    with rasterio.open(path) as ds:
        cx, cy = ds.transform * (ds.width / 2, ds.height / 2)
    aoi = gpd.GeoDataFrame(geometry=[box(cx - half, cy - half, cx + half, cy + half)],
                           crs="EPSG:32633")  # fmt: skip
    aoi.to_file(tmp_path / "aoi.geojson")
    return tmp_path / "aoi.geojson"


def test_a_rotated_raster_opens_without_two_dimensional_coordinates(tmp_path):
    scene = open_raster(_rotated(tmp_path, 30))
    assert not {"xc", "yc"} & set(scene.coords)  # rioxarray's would be 2 x 8 bytes per pixel
    assert scene.rio.transform() == rasterio.open(tmp_path / "rotated_30.tif").transform


@pytest.mark.skipif(RIO is None, reason="rasterio's rio command is not installed")
@pytest.mark.parametrize("angle", [30, 90, 150])
def test_reprojecting_a_rotated_raster_equals_rio_warp(tmp_path, angle, capsys):
    source = _rotated(tmp_path, angle)
    assert main(["prepare", str(source), str(tmp_path / "ours.tif"),
                 "--dst-crs", "EPSG:4326"]) == 0  # fmt: skip
    subprocess.run([RIO, "warp", str(source), str(tmp_path / "rio.tif"),
                    "--dst-crs", "EPSG:4326"], check=True)  # fmt: skip
    with rasterio.open(tmp_path / "ours.tif") as ours, rasterio.open(tmp_path / "rio.tif") as rio:
        assert (ours.shape, ours.transform) == (rio.shape, rio.transform)
        np.testing.assert_array_equal(ours.read(), rio.read())
        valid = ours.read(1) != 0
    # The rotated square fills 1 / (|cos| + |sin|)^2 of its north-up box: nothing cut off.
    a = np.radians(angle)
    assert valid.mean() == pytest.approx(1 / (abs(np.cos(a)) + abs(np.sin(a))) ** 2, abs=0.03)


@pytest.mark.parametrize("command", ["prepare", "predict"])
def test_an_aoi_clips_a_rotated_raster_at_the_right_ground_position(tmp_path, command, capsys):
    source = _rotated(tmp_path, 30)
    aoi = _aoi_at_centre(source, tmp_path)  # 400 m square: 1600 pixels of 10 m
    out = tmp_path / f"{command}.tif"
    assert main([command, str(source), str(out), "--aoi", str(aoi)]) == 0
    with rasterio.open(out) as ds, rasterio.open(source) as src:
        assert ds.transform.b == src.transform.b and ds.transform.d == src.transform.d
        values = ds.read(1)
        rows, cols = np.nonzero(values != ds.nodata)
        assert abs(len(rows) - 1600) <= 40  # pixel centres inside a square at 30 degrees
        xs, ys = xy(ds.transform, rows, cols)
        src_rows, src_cols = rowcol(src.transform, xs, ys)
        ground = gpd.GeoSeries(gpd.points_from_xy(xs, ys), crs=src.crs)
        assert ground.within(gpd.read_file(aoi).geometry[0]).all()
        if command == "prepare":  # the same pixels, moved nowhere
            np.testing.assert_array_equal(src.read(1)[src_rows, src_cols], values[rows, cols])
    if command == "predict":  # the classes of the whole raster at the same ground positions
        main(["predict", str(source), str(tmp_path / "whole.tif")])
        with rasterio.open(tmp_path / "whole.tif") as whole:
            agree = whole.read(1)[src_rows, src_cols] == values[rows, cols]
        assert agree.mean() >= 0.99


def test_a_raster_across_the_antimeridian_is_not_stretched_around_the_world(tmp_path, capsys):
    # UTM zone 60 east of 180 degrees: GDAL's grid for EPSG:3857 is a 283 x 1 strip of 360 degrees.
    source = _raster(tmp_path / "fiji.tif", from_origin(800000, 1000000, 350, 350), "EPSG:32660")
    out = tmp_path / "out.tif"
    assert main(["prepare", str(source), str(out), "--dst-crs", "EPSG:3857"]) == 2
    err = capsys.readouterr().err
    assert "antimeridian" in err and "UTM zone" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["prepare", str(source), str(out), "--dst-crs", "EPSG:32601"]) == 0  # local: fine


def test_the_service_answers_a_rotated_scene_on_its_own_grid(tmp_path):
    from starlette.testclient import TestClient

    from seamline.app.service import create_app

    source = _rotated(tmp_path, 30)
    with TestClient(create_app("demo", precision="fp32", tile_size=64, overlap=32)) as client:
        reply = client.post("/predict", content=source.read_bytes(),
                            headers={"content-type": "image/tiff"})  # fmt: skip
    assert reply.status_code == 200, reply.text
    (tmp_path / "reply.tif").write_bytes(reply.content)
    with rasterio.open(tmp_path / "reply.tif") as out, rasterio.open(source) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)


def test_a_dashboard_upload_with_a_rotated_grid_is_one_sentence(tmp_path):
    from seamline.components.scene_picker import ScenePicker

    picker = ScenePicker()
    before = picker.scene
    assert not picker.use_upload(_rotated(tmp_path, 30).read_bytes(), "rotated.tif")
    assert picker.message.startswith("The upload 'rotated.tif' has a rotated geotransform")
    assert "--dst-crs EPSG:32633" in picker.message and picker.scene is before


def test_north_up_in_its_own_crs_keeps_the_pixel_size_and_every_pixel(tmp_path, capsys):
    source = _rotated(tmp_path, 30)  # what the dashboard's sentence tells a user to run
    assert main(["prepare", str(source), str(tmp_path / "north_up.tif"),
                 "--dst-crs", "EPSG:32633"]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "north_up.tif") as ds:
        assert (ds.transform.a, ds.transform.b, ds.transform.d, ds.transform.e) == (10, 0, 0, -10)
        assert abs(int((ds.read(1) != 0).sum()) - 200 * 200) < 0.01 * 200 * 200
