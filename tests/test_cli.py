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
from tests.conftest import ROOT, write_tif


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


def test_sigterm_and_kill_9_leave_no_hidden_part_files(tmp_path):
    """SIGTERM unwinds like Ctrl-C (exit 143, nothing written); the temporary file of a
    process killed with -9 is removed by the next write of that output."""
    import signal
    import time

    from seamline.core.data.io import write_raster
    from seamline.core.demo.synthetic import make_scene

    scene = write_raster(make_scene(1536, 1536, seed=2)[0], tmp_path / "big.tif")
    out = tmp_path / "classes.tif"
    exe = str(Path(sys.executable).with_name("seamline"))
    proc = subprocess.Popen([exe, "predict", str(scene), str(out), "--tile-size", "256",
                             "--precision", "fp32"],  # FP32: seconds, still running at the signal
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not list(tmp_path.glob(".classes.tif.*.part")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # well inside the prediction
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "seamline predict: terminated" in err
    assert "Traceback" not in err and not out.exists()
    assert list(tmp_path.glob(".*.part*")) == [] and list(tmp_path.glob("*.gtiff")) == []

    orphan = tmp_path / f".classes.tif.{2**22 + 7}.x1y2.part"  # no such process
    orphan.write_bytes(b"half a GeoTIFF")
    small = write_raster(make_scene(64, 64, seed=3)[0], tmp_path / "small.tif")
    assert main(["predict", str(small), str(out)]) == 0
    assert out.exists() and not orphan.exists()


@pytest.mark.parametrize("case", [
    "no CRS", "garbage onnx", "broken sidecar", "tile size 0", "truncated calibration",
    "AOI at 1e30", "stats not a dict", "output a folder", "int8 onnx at bf16", "two class names",
    "tile size 100000", "negative receptive radius", "model a folder", "out not .onnx",
    "calibration bands",
])  # fmt: skip
def test_more_bad_inputs_are_one_sentence(case, tmp_path, capsys):
    """Found by an outside review: each used to end in a traceback (issue #19)."""
    from rasterio.transform import from_origin

    from tests.conftest import write_tif

    data = np.random.default_rng(0).integers(1, 3000, (6, 64, 64)).astype("uint16")
    good = write_tif(tmp_path / "ok.tif", data)
    out = str(tmp_path / "out.tif")
    if case == "no CRS":
        bad = write_tif(tmp_path / "nocrs.tif", data, crs=None, transform=from_origin(0, 64, 1, 1))
        argv, phrase = ["predict", str(bad), out], "has no CRS"
    elif case == "garbage onnx":
        (tmp_path / "m.onnx").write_bytes(b"not an onnx model" * 10)
        argv, phrase = ["predict", str(good), out, "--model", str(tmp_path / "m.onnx")], "ONNX"
    elif case == "broken sidecar":
        shutil.copy(ROOT / "core" / "demo" / "assets" / "demo_unet.pt", tmp_path / "m.pt")
        (tmp_path / "m.json").write_text("{not json")
        argv, phrase = ["predict", str(good), out, "--model", str(tmp_path / "m.pt")], "JSON"
    elif case == "stats not a dict":  # the next three: an outside review, session 15
        shutil.copy(ROOT / "core" / "demo" / "assets" / "demo_unet.pt", tmp_path / "m.pt")
        meta = json.loads((ROOT / "core" / "demo" / "assets" / "demo_unet.json").read_text())
        (tmp_path / "m.json").write_text(json.dumps(meta | {"stats": "garbage"}))
        argv = ["predict", str(good), out, "--model", str(tmp_path / "m.pt")]
        phrase = "m.json' has malformed \"stats\" (band statistics lack"
    elif case == "two class names":  # for a 5-class network: ids 2-4 were written unnamed
        shutil.copy(ROOT / "core" / "demo" / "assets" / "demo_unet.pt", tmp_path / "m.pt")
        meta = json.loads((ROOT / "core" / "demo" / "assets" / "demo_unet.json").read_text())
        (tmp_path / "m.json").write_text(json.dumps(meta | {"classes": ["a", "b"]}))
        argv = ["predict", str(good), out, "--model", str(tmp_path / "m.pt")]
        phrase = "outputs 5 classes but 2 class names were given (a, b)"
    elif case == "negative receptive radius":  # was "overlap must be >= 0 ... got -20"
        shutil.copy(ROOT / "core" / "demo" / "assets" / "demo_unet.pt", tmp_path / "m.pt")
        meta = json.loads((ROOT / "core" / "demo" / "assets" / "demo_unet.json").read_text())
        (tmp_path / "m.json").write_text(json.dumps(meta | {"receptive_radius": -5}))
        argv = ["predict", str(good), out, "--model", str(tmp_path / "m.pt")]
        phrase = "gives \"receptive_radius\": -5: give the pixels"
    elif case == "model a folder":  # was "does not exist"
        argv, phrase = ["predict", str(good), out, "--model", str(tmp_path)], "is a folder: pass"
    elif case == "out not .onnx":  # refused after the calibration
        argv = ["quantize", "--out", str(tmp_path / "q.txt")]
        phrase = "saved as .onnx, got"
    elif case == "calibration bands":  # the sentence did not name the file
        three = write_tif(tmp_path / "three.tif", data[:3])
        argv = ["predict", str(good), out, "--precision", "int8", "--calibration", str(three)]
        phrase = f"--calibration {str(three)!r}: "
    elif case == "output a folder":
        (tmp_path / "out.tif").mkdir()
        argv, phrase = ["predict", str(good), out, "--precision", "fp32"], "is a folder"
    elif case == "int8 onnx at bf16":
        assert main(["quantize", "--tile-size", "64", "--out", str(tmp_path / "q.onnx")]) == 0
        argv = ["predict", str(good), out, "--model", str(tmp_path / "q.onnx"), "--precision",
                "bf16"]  # fmt: skip
        phrase = "is INT8: run it with --precision int8 or auto"
    elif case == "tile size 0":
        argv, phrase = ["quantize", "--tile-size", "0"], "at least 16 px"
    elif case == "tile size 100000":  # torch was asked for 240 GB
        argv, phrase = ["predict", str(good), out, "--tile-size", "100000"], "at most 8192 px"
    elif case == "AOI at 1e30":
        far = [[1e30, 1e30], [1e30, 2e30], [2e30, 2e30], [2e30, 1e30], [1e30, 1e30]]
        (tmp_path / "aoi.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [far]}))
        argv = ["prepare", str(good), out, "--aoi", str(tmp_path / "aoi.geojson")]
        phrase = "does not project into the raster's CRS"
    else:
        (tmp_path / "cut.tif").write_bytes(good.read_bytes()[:3000])
        argv, phrase = ["quantize", "--calibration", str(tmp_path / "cut.tif")], "decoded"
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"seamline {argv[0]}: error: ")  # one line


@pytest.mark.parametrize(("descriptions", "given", "shown"), [
    (("blue",) * 4, None, "'blue' (4 bands)"),  # rioxarray collapses them into one string
    (("blue", "green", "blue", "nir"), None, "'blue' (2 bands)"),
    (("blue", "green", "red", "nir"), "red,red,red,nir", "'red' (3 bands)"),
])  # fmt: skip
def test_bands_named_alike_are_one_sentence_not_renamed(capsys, tmp_path, descriptions, given,
                                                        shown):  # fmt: skip
    """Review: six bands all described "blue" were renamed band_1..6 silently, and the model
    then took them by position."""
    data = np.random.default_rng(0).integers(1, 3000, size=(4, 32, 32), dtype=np.uint16)
    source = write_tif(tmp_path / "alike.tif", data, descriptions=descriptions)
    names = ["--band-names", given] if given else []
    code, _, err = run(capsys, "prepare", source, tmp_path / "out.tif", *names)
    assert_one_sentence_error(code, err, shown, "--band-names")
    assert not (tmp_path / "out.tif").exists()
    fixed = ["--band-names", "blue,green,red,nir"]
    assert run(capsys, "prepare", source, tmp_path / "out.tif", *fixed)[0] == 0


def test_an_aoi_geopackage_of_several_layers_needs_its_layer_named(capsys, tmp_path, small_tif,
                                                                   small_aoi):  # fmt: skip
    """Review: a two-layer GeoPackage silently used its first layer."""
    aoi = gpd.read_file(small_aoi)
    package = tmp_path / "site.gpkg"
    aoi.to_file(package, layer="roads")  # listed first: the silent choice
    aoi.to_file(package, layer="fields")
    for command in ("prepare", "predict"):
        code, _, err = run(capsys, command, small_tif, tmp_path / "out.tif", "--aoi", package)
        assert_one_sentence_error(code, err, "2 layers (roads, fields)", "--aoi-layer")
    code, out, _ = run(capsys, "prepare", small_tif, tmp_path / "out.tif", "--aoi", package,
                       "--aoi-layer", "fields")  # fmt: skip
    assert code == 0 and json.loads(out)["valid_fraction"] < 0.5
    code, _, err = run(capsys, "prepare", small_tif, tmp_path / "o2.tif", "--aoi", package,
                       "--aoi-layer", "parcels")  # fmt: skip
    assert_one_sentence_error(code, err, "site.gpkg")
    assert not (tmp_path / "o2.tif").exists()


def test_no_cache_neither_reads_nor_writes_the_disk_cache(tmp_path, monkeypatch, capsys):
    """An outside review: predict --no-cache still wrote the seam probe's figure."""
    from seamline.core.data.io import write_raster
    from seamline.core.demo.synthetic import make_scene

    cache = tmp_path / "cache"
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(cache))
    source = write_raster(make_scene(256, 256, seed=7)[0], tmp_path / "scene.tif")
    argv = ["predict", str(source), str(tmp_path / "out.tif"), "--tile-size", "128"]
    assert main([*argv, "--overlap", "32", "--no-cache"]) == 0
    assert "measured on a random probe" in capsys.readouterr().err  # the probe ran
    assert not [p for p in cache.rglob("*") if p.is_file()]
    assert main([*argv, "--overlap", "40"]) == 0  # with the cache: its figure is kept
    assert "measured on a random probe" in capsys.readouterr().err
    assert len(list((cache / "seams").glob("*.json"))) == 1
