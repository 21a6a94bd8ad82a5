"""``seamline vectorize`` and ``seamline predict --vector``: JSON out, one sentence on bad input."""

import json

import geopandas as gpd
import numpy as np
import rasterio

from seamline.app.cli import EXIT_USER_ERROR, main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import CLASSES, make_scene
from seamline.core.vector.polygonize import polygonize
from tests.conftest import write_tif
from tests.test_vectorize import assert_same_polygons


def test_vectorize_cli_prints_counts_seconds_and_peak_rss(tmp_path, capsys):
    _, labels = make_scene(120, 100, seed=2)
    src = write_raster(labels, tmp_path / "labels.tif")
    out = tmp_path / "fields.gpkg"
    code = main(
        [
            "vectorize",
            str(src),
            str(out),
            "--window",
            "32",
            "--class",
            "cropland",
            "water",
            "--min-area",
            "500",
            "--connectivity",
            "8",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    expected = polygonize(
        labels, classes_to_keep=["cropland", "water"], min_area=500, connectivity=8
    )
    assert report["polygons"] == expected["class_name"].value_counts().to_dict()
    assert report["seconds"] > 0 and report["peak_rss_mb"] > 0 and report["window"] == 32
    assert_same_polygons(gpd.read_file(out), expected)


def test_vectorize_cli_bad_input_one_sentence_no_output(tmp_path, capsys):
    probs = write_tif(tmp_path / "probs.tif", np.zeros((3, 8, 8), np.float32), nodata=None)
    no_crs = write_tif(tmp_path / "nocrs.tif", np.ones((1, 8, 8), np.uint8), crs=None)
    _, labels = make_scene(32, 32, seed=1)
    good = write_raster(labels, tmp_path / "labels.tif")
    cases = [
        ([probs, tmp_path / "a.gpkg"], "integer class ids"),
        ([no_crs, tmp_path / "b.gpkg"], "has no CRS"),
        ([good, tmp_path / "c.kml"], "unsupported format"),
        ([good, tmp_path / "nope" / "d.gpkg"], "does not exist"),
        ([tmp_path / "none.tif", tmp_path / "e.gpkg"], "does not exist"),
        ([good, tmp_path / "f.gpkg", "--class", "wter"], "did you mean 'water'"),
    ]
    for argv, fragment in cases:
        code = main(["vectorize", *map(str, argv)])
        err = capsys.readouterr().err
        assert code == EXIT_USER_ERROR
        assert fragment in err and "Traceback" not in err and err.count("\n") == 1
        assert not argv[1].exists()


def test_predict_cli_writes_polygons_beside_the_class_raster(tmp_path, capsys):
    scene, _ = make_scene(96, 96, seed=11)
    src = write_raster(scene, tmp_path / "scene.tif")
    out, vector = tmp_path / "classes.tif", tmp_path / "classes.gpkg"
    code = main(
        [
            "predict",
            str(src),
            str(out),
            "--tile-size",
            "64",
            "--overlap",
            "16",
            "--vector",
            str(vector),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    polygons = gpd.read_file(vector)
    assert report["vector"]["total_polygons"] == len(polygons) > 0
    assert {"seconds", "peak_rss_mb"} <= set(report["vector"])
    assert set(polygons["class_name"]) <= set(CLASSES)  # names travel in the GeoTIFF's tags
    assert_same_polygons(polygons, polygonize(out))
    bad = tmp_path / "x.shp"
    code = main(["predict", str(src), str(tmp_path / "c2.tif"), "--vector", str(bad)])
    assert code == EXIT_USER_ERROR and "unsupported format" in capsys.readouterr().err
    assert not (tmp_path / "c2.tif").exists()  # refused before predicting


def test_vectorize_cli_corrupt_pixel_data_is_one_sentence(tmp_path, capsys):
    """The header reads, the pixels (read window by window, later) do not."""
    _, labels = make_scene(64, 64, seed=4)
    src = write_raster(labels, tmp_path / "labels.tif")
    with rasterio.open(src) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    data = bytearray(src.read_bytes())
    data[offset + 2 : offset + 64] = b"\xff" * 62  # the deflate stream of the first block
    src.write_bytes(bytes(data))
    out = tmp_path / "out.gpkg"
    code = main(["vectorize", str(src), str(out), "--window", "32"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "could not be decoded" in err and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()
