"""Remote COGs (issue #21): predict, prepare and drift read an HTTP(S) URL with range
requests; an AOI fetches a small share of the file; remote paths stay refused to dashboard
visitors. A local server (tests/rangeserver.py, 127.0.0.1) honours Range and counts bytes."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from shapely.geometry import box

from seamline.app.cli import main
from seamline.core.data.io import open_raster, write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InputFileError, PathOutsideRootsError
from seamline.core.models.modelio import load_model
from seamline.core.monitor.series import folder_series
from seamline.core.predict.file import predict_file
from tests.rangeserver import serving
from tests.test_cli import assert_one_sentence_error

TILING = {"tile_size": 256, "overlap": 32, "batch_size": 1}


def write_cog(folder, name: str, size: int, seed: int):
    plain = write_raster(make_scene(size, size, seed=seed)[0], folder / f"{name}.plain.tif")
    rasterio.shutil.copy(plain, folder / f"{name}.tif", driver="COG", compress="deflate",
                         blocksize=256)  # fmt: skip
    plain.unlink()
    return folder / f"{name}.tif"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    cogs = {"scene": write_cog(folder, "scene", 600, 5), "big": write_cog(folder, "big", 2048, 6)}
    with serving(folder) as server:
        yield server, cogs


def _classes(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs


def test_a_remote_cog_predicts_as_the_local_file_bit_for_bit(served, tmp_path):
    server, cogs = served
    demo = load_model("demo")
    predict_file(cogs["scene"], tmp_path / "local.tif", model=demo, **TILING)
    before = server.bytes_sent
    report = predict_file(server.url("scene.tif"), tmp_path / "remote.tif", model=demo, **TILING)
    assert server.bytes_sent - before > 0  # it did read over HTTP
    local, remote = _classes(tmp_path / "local.tif"), _classes(tmp_path / "remote.tif")
    np.testing.assert_array_equal(remote[0], local[0])
    assert remote[1:] == local[1:] and report["tiles"] == report["grid_tiles"]


def test_an_aoi_of_a_remote_cog_fetches_a_small_share_of_it(served, tmp_path):
    server, cogs = served
    scene = open_raster(server.url("big.tif"))
    x0, y0 = scene.rio.transform() * (100, 100)
    x1, y1 = scene.rio.transform() * (400, 400)  # 300 x 300 px of 2048 x 2048
    aoi = gpd.GeoDataFrame(geometry=[box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))],
                           crs=scene.rio.crs)  # fmt: skip
    aoi.to_file(tmp_path / "aoi.geojson")
    before = server.bytes_sent
    code = main(["predict", server.url("big.tif"), str(tmp_path / "aoi.tif"), "--aoi",
                 str(tmp_path / "aoi.geojson"), "--precision", "fp32", "--tile-size", "256"])
    fetched = server.bytes_sent - before
    assert code == 0
    share = fetched / cogs["big"].stat().st_size
    assert 0 < share < 0.1, share  # the AOI's blocks, not the file (4 of 64 blocks: ~6 %)
    with rasterio.open(tmp_path / "aoi.tif") as out:
        assert out.shape == (300, 300)


def test_prepare_and_drift_read_a_url(served, tmp_path, capsys):
    server, cogs = served
    remote = open_raster(server.url("scene.tif"))
    local = open_raster(cogs["scene"])
    assert list(remote.band.values) == list(local.band.values) and remote.name == "scene"
    np.testing.assert_array_equal(remote.values, local.values)
    assert main(["prepare", server.url("scene.tif"), str(tmp_path / "prepared.tif")]) == 0
    capsys.readouterr()
    baseline = tmp_path / "baseline.json"
    assert main(["drift", "baseline", str(cogs["scene"]), "--out", str(baseline)]) == 0
    capsys.readouterr()
    db = tmp_path / "history.sqlite"
    code = main(["drift", "check", server.url("scene.tif"), "--baseline", str(baseline),
                 "--db", str(db), "--time", "2026-06-01"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["drift"] is False  # the baseline's own scene, over HTTP
    assert main(["drift", "history", "--db", str(db), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert {(r["scene"], r["time"][:10]) for r in records} == {(server.url("scene.tif"),
                                                                "2026-06-01")}  # fmt: skip


@pytest.mark.parametrize("url", ["scene_missing.tif", "http://127.0.0.1:9/x.tif", "https://"])
def test_an_unreadable_url_is_one_sentence_and_writes_nothing(served, tmp_path, capsys, url):
    server, _ = served
    url = server.url(url) if not url.startswith("http") else url
    out = tmp_path / "classes.tif"
    code = main(["predict", url, str(out), "--precision", "fp32"])
    assert_one_sentence_error(code, capsys.readouterr().err, "Raster URL")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_url_is_refused_where_a_visitor_types_a_folder(tmp_path, served):
    server, _ = served
    with pytest.raises((PathOutsideRootsError, InputFileError)):
        folder_series(server.url(""), roots=[tmp_path])
