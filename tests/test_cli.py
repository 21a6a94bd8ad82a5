"""The command line: good runs print JSON, bad input prints one sentence and exits 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from seamline.app.cli import EXIT_USER_ERROR, main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_sentence_error(code, err, *fragments):
    assert code == EXIT_USER_ERROR
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


def test_prepare_writes_geotiff_stats_and_prints_json(capsys, tmp_path, small_tif, small_aoi):
    out, stats = tmp_path / "prepared.tif", tmp_path / "stats.json"
    code, stdout, _ = run(
        capsys, "prepare", small_tif, out, "--aoi", small_aoi, "--fit-stats", stats
    )
    assert code == 0
    report = json.loads(stdout)
    assert report["crs"] == "EPSG:32633" and report["stats"] == str(stats)
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert tuple(src.bounds) == pytest.approx(report["bounds"])
    again = tmp_path / "again.tif"
    code, stdout, _ = run(capsys, "prepare", small_tif, again, "--stats", stats, "--cog")
    assert code == 0
    with rasterio.open(again) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_prepare_bad_inputs_one_sentence_no_output(capsys, tmp_path, small_tif, small_aoi):
    from tests.conftest import write_tif

    no_crs = write_tif(tmp_path / "nocrs.tif", np.ones((1, 4, 4), dtype=np.uint8), crs=None)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[box(100, 10, 101, 11)], crs=4326).to_file(far)
    empty_aoi = tmp_path / "empty.geojson"
    empty_aoi.write_text('{"type": "FeatureCollection", "features": []}')
    collar = tmp_path / "collar.geojson"
    gpd.GeoDataFrame(geometry=[box(500100, 4999960, 500300, 4999990)], crs=32633).to_file(collar)
    out = tmp_path / "out.tif"
    cases = [
        (["prepare", tmp_path / "missing.tif", out], ["missing.tif", "does not exist"]),
        (["prepare", no_crs, out], ["has no CRS"]),
        (["prepare", small_tif, out, "--aoi", far], ["does not overlap"]),
        (["prepare", small_tif, out, "--aoi", empty_aoi], ["no geometry"]),
        (["prepare", small_tif, out, "--aoi", collar], ["no valid pixels"]),
        (["prepare", small_tif, out, "--dst-crs", "EPSG:12345678"], ["Unknown CRS"]),
        (
            ["prepare", small_tif, out, "--dst-crs", "EPSG:4326", "--resampling", "cubc"],
            ["Did you mean 'cubic'"],
        ),
        (["prepare", small_tif, tmp_path / "nope" / "out.tif"], ["does not exist"]),
        (["prepare", small_tif, out, "--band-names", "a,b"], ["4 bands but 2 band names"]),
        (["prepare", small_tif, out, "--stats", tmp_path / "nostats.json"], ["does not exist"]),
    ]
    for argv, fragments in cases:
        code, _, err = run(capsys, *argv)
        assert_one_sentence_error(code, err, *fragments)
        assert not out.exists(), argv
        assert not list(tmp_path.glob(".*.part"))


def test_console_script_is_installed_and_reports_errors(tmp_path):
    exe = shutil.which("seamline") or str(Path(sys.executable).with_name("seamline"))
    proc = subprocess.run(
        [exe, "prepare", str(tmp_path / "x.tif"), str(tmp_path / "y.tif")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys):
    """`predict s.tif s.tif` used to overwrite the scene being read."""
    from seamline.core.data.io import write_raster
    from seamline.core.demo.synthetic import make_scene

    scene = write_raster(make_scene(64, 64, seed=1)[0], tmp_path / "s.tif")
    before = scene.read_bytes()
    alias = tmp_path / "sub" / ".." / "s.tif"
    (tmp_path / "sub").mkdir()
    for argv in (["predict", str(scene), str(scene)], ["prepare", str(scene), str(alias)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is the input file" in err and "choose another output path" in err
    assert scene.read_bytes() == before
