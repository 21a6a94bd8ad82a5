"""``seamline predict-many`` (issue #21): a batch over folders, lists of paths and URLs and
STAC catalogs; scenes done are skipped, an interrupted scene resumes from its staged rows, a
bad scene fails alone."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pystac
import pytest
import rasterio
from shapely.geometry import box, mapping

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.modelio import load_model
from seamline.core.predict.file import predict_file
from tests.rangeserver import serving
from tests.test_cli import assert_one_sentence_error

TILING = ["--tile-size", "128", "--overlap", "32", "--precision", "fp32"]


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, size in enumerate((200, 260, 300)):
        write_raster(make_scene(size, size, seed=20 + i)[0], folder / f"s{i}.tif")
    return folder


def _run(capsys, *argv):
    code = main(["predict-many", *argv, *TILING])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _classes(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_a_folder_and_a_list_with_a_url_then_a_rerun_skips_them(scenes, tmp_path, capsys):
    out, served = tmp_path / "out", tmp_path / "served"
    out.mkdir()
    served.mkdir()
    (served / "r.tif").write_bytes((scenes / "s2.tif").read_bytes())
    with serving(served) as server:
        listing = tmp_path / "more.txt"
        listing.write_text(f"# a remote copy of s2\n{server.url('r.tif')}\n")
        code, report, err = _run(capsys, str(scenes), str(listing), "--out-dir", str(out))
    assert code == 0 and len(report["done"]) == 4 and not report["failed"]
    assert sorted(p.name for p in out.iterdir()) == ["r.tif", "s0.tif", "s1.tif", "s2.tif"]
    assert err.count("ETA") == 4
    np.testing.assert_array_equal(_classes(out / "r.tif"), _classes(out / "s2.tif"))
    assert main(["predict", str(scenes / "s1.tif"), str(tmp_path / "one.tif"), *TILING]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(_classes(out / "s1.tif"), _classes(tmp_path / "one.tif"))

    code, report, _ = _run(capsys, str(scenes), "--out-dir", str(out))
    assert code == 0 and report["done"] == [] and len(report["skipped"]) == 3


def test_an_interrupted_scene_resumes_and_a_bad_one_fails_alone(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    reference = tmp_path / "reference.tif"
    options = {"model": load_model("demo"), "tile_size": 128, "overlap": 32}
    predict_file(scenes / "s1.tif", reference, **options)

    def stop_half_way(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # as a batch killed inside s1
        predict_file(scenes / "s1.tif", out / "s1.tif", resume=True, progress=stop_half_way,
                     **options)  # fmt: skip
    (scenes / "broken.tif").write_bytes(b"II*\x00 not a GeoTIFF")
    code, report, err = _run(capsys, str(scenes), "--out-dir", str(out))
    assert code == 2
    assert [r["input"] for r in report["failed"]] == [str(scenes / "broken.tif")]
    assert "broken" in err and "Traceback" not in err
    resumed = next(r for r in report["done"] if r["input"].endswith("s1.tif"))
    assert resumed["resumed_from_row"] > 0 and resumed["tiles"] < resumed["grid_tiles"]
    np.testing.assert_array_equal(_classes(out / "s1.tif"), _classes(reference))
    assert sorted(p.name for p in out.iterdir()) == ["s0.tif", "s1.tif", "s2.tif"]


def test_every_item_of_a_stac_catalog(tmp_path, capsys):
    catalog = pystac.Catalog("batch", "two items")
    for i in range(2):
        scene = make_scene(160, 160, seed=40 + i)[0]
        path = write_raster(scene, tmp_path / f"item{i}.tif")
        item = pystac.Item(f"item-{i}", mapping(box(0, 0, 1, 1)), [0, 0, 1, 1],
                           dt.datetime(2026, 6, 1 + i, tzinfo=dt.UTC), {})  # fmt: skip
        item.add_asset("image", pystac.Asset(str(path)))
        catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path / "catalog"), pystac.CatalogType.SELF_CONTAINED)
    out = tmp_path / "out"
    out.mkdir()
    code, report, _ = _run(capsys, str(tmp_path / "catalog" / "catalog.json"), "--assets",
                           "image", "--band-names", "blue,green,red,nir,swir1,swir2",
                           "--out-dir", str(out))  # fmt: skip
    assert code == 0 and len(report["done"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["item-0.tif", "item-1.tif"]


def test_two_scenes_of_one_name_are_one_sentence(scenes, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "s0.tif").write_bytes((scenes / "s0.tif").read_bytes())
    code = main(["predict-many", str(scenes), str(tmp_path / "other"), "--out-dir",
                 str(tmp_path)])  # fmt: skip
    assert_one_sentence_error(code, capsys.readouterr().err, "'s0'", "collide")
