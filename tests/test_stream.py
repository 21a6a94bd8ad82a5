"""One tile grid streamed (issue #22): a file predicted a tile row at a time equals the
scene predicted whole, bit for bit; every tile runs once; memory is a few tile rows."""

from __future__ import annotations

import math
import weakref

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.features import geometry_mask
from shapely.geometry import Polygon

from seamline.app.cli import main
from seamline.core.data.io import open_raster, write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.modelio import load_model
from seamline.core.predict.blocks import CLASS_NODATA
from seamline.core.predict.file import predict_file
from seamline.core.predict.scene import predict_scene
from seamline.core.predict.stream import stream_tiles
from seamline.core.predict.tiling import Blend, TileGrid, predict_tiled
from seamline.core.prepare.scene import crop_to_aoi
from tests.test_cli import assert_one_sentence_error

TILING = {"tile_size": 64, "overlap": 24, "batch_size": 3, "device": "cpu"}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def _scene(height, width, *, seed=4, nodata_rows=0):
    scene = make_scene(height, width, seed=seed)[0]
    if nodata_rows:  # a band of nodata across the raster: whole tiles of it are skipped
        scene[:, 70 : 70 + nodata_rows, :] = 0
    return scene


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


@pytest.mark.parametrize("blend", list(Blend))
@pytest.mark.parametrize("shape", [(300, 341), (45, 130), (700, 70)])
def test_a_streamed_file_equals_the_scene_predicted_whole_bit_for_bit(demo, tmp_path, blend,
                                                                      shape):  # fmt: skip
    scene = _scene(*shape, nodata_rows=150 if shape[0] == 700 else 0)
    src = write_raster(scene, tmp_path / "scene.tif")
    report = predict_file(src, tmp_path / "classes.tif", model=demo, blend=blend, **TILING)
    classes, transform, crs = _read(tmp_path / "classes.tif")
    expected = predict_scene(demo, open_raster(src), blend=blend, **TILING)
    np.testing.assert_array_equal(classes[0], expected.values)
    assert (transform, crs) == (expected.rio.transform(), expected.rio.crs)
    grid = TileGrid(*shape, 64, 24, blend, demo.align)
    assert report["grid_tiles"] == len(grid) and report["tile_rows"] == len(grid.rows)
    if shape[0] == 700:  # the nodata band held whole tiles, which were skipped
        assert (classes == CLASS_NODATA).any() and report["tiles"] < len(grid)
    else:  # each tile of the one grid ran exactly once
        assert report["tiles"] == len(grid)


def test_streamed_probabilities_equal_the_whole_scene_bit_for_bit(demo, tmp_path):
    scene = _scene(230, 190)
    scene[:, :20, :30] = 0  # a nodata corner
    src = write_raster(scene, tmp_path / "scene.tif")
    for prefetch in (True, False):
        out = tmp_path / f"probs-{prefetch}.tif"
        predict_file(src, out, model=demo, probabilities=True, prefetch=prefetch, **TILING)
        probs, _, _ = _read(out)
        expected = predict_scene(demo, open_raster(src), probabilities=True, **TILING).values
        np.testing.assert_array_equal(probs, expected)  # NaN where nodata, on both
        assert np.isnan(probs[:, :20, :30]).all() and np.isfinite(probs[:, 25:, 35:]).all()


def test_an_aoi_streams_its_window_and_masks_outside_the_polygon(demo, tmp_path):
    scene = _scene(260, 300)
    src = write_raster(scene, tmp_path / "scene.tif")
    x0, y0 = scene.rio.transform() * (30, 40)
    x1, y1 = scene.rio.transform() * (250, 220)
    aoi = gpd.GeoDataFrame(geometry=[Polygon([(x0, y0), (x1, y0), (x0, y1)])],
                           crs=scene.rio.crs)  # fmt: skip
    predict_file(src, tmp_path / "classes.tif", model=demo, aoi=aoi, **TILING)
    classes, transform, _ = _read(tmp_path / "classes.tif")
    window = crop_to_aoi(open_raster(src), aoi)
    inside = ~geometry_mask(list(aoi.geometry), out_shape=classes.shape[1:],
                            transform=transform)  # fmt: skip
    expected = np.where(inside, predict_scene(demo, window, **TILING).values, CLASS_NODATA)
    np.testing.assert_array_equal(classes[0], expected)
    assert transform == window.rio.transform() and 0.3 < inside.mean() < 0.7


def test_int8_on_onnx_runtime_streams_like_the_whole_scene(demo, tmp_path):
    from seamline.core.optimise.quantize import quantize

    int8 = quantize(demo, make_scene(128, 128, seed=9)[0], cache=False)
    src = write_raster(_scene(200, 260), tmp_path / "scene.tif")
    kwargs = TILING | {"batch_size": 2}  # two batches in flight on two ONNX Runtime sessions
    predict_file(src, tmp_path / "classes.tif", model=int8, **kwargs)
    expected = predict_scene(int8, open_raster(src), **kwargs).values
    np.testing.assert_array_equal(_read(tmp_path / "classes.tif")[0][0], expected)


def test_each_tile_row_is_read_once_rows_come_out_once_and_few_strips_are_held():
    net = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    image = torch.randn(3, 530, 200)
    grid = TileGrid(530, 200, 64, 16, Blend.COSINE)
    per_row = len(grid.cols)
    reads, live, emitted = [], [], []

    def source(a, b):
        alive = [ref for ref in live if ref() is not None]
        reads.append((a, b, len(alive)))
        strip = image[:, a:b].clone()
        live[:] = [*alive, weakref.ref(strip)]
        return strip

    stream_tiles(net, source, grid, lambda a, b, s: emitted.append((a, b, s.clone())),
                 batch_size=5, device="cpu")  # fmt: skip
    assert [a for a, _, _ in reads] == list(grid.rows)  # each strip read once, in order
    assert max(n for _, _, n in reads) <= math.ceil(5 / per_row) + 1  # strips held
    assert [a for a, _, _ in emitted] == [0, *[b for _, b, _ in emitted[:-1]]]
    assert emitted[-1][1] == 530  # every row once, in order
    whole = predict_tiled(net, image, tile_size=64, overlap=16, batch_size=5, device="cpu")
    np.testing.assert_array_equal(torch.cat([s for _, _, s in emitted], 1).numpy(), whole)


def test_block_size_without_a_scheduler_is_one_sentence(tmp_path, capsys):
    src = write_raster(_scene(64, 64), tmp_path / "scene.tif")
    code = main(["predict", str(src), str(tmp_path / "out.tif"), "--block-size", "512"])
    assert_one_sentence_error(code, capsys.readouterr().err, "--block-size", "--scheduler")
    assert not (tmp_path / "out.tif").exists()


def _modules_loaded(argv: list[str]) -> tuple[set[str], str]:
    """The modules ``seamline ARGV`` has imported when it exits, and its stdout."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import atexit, sys; atexit.register(lambda: print(' '.join(sorted(sys.modules)), "
            "file=sys.stderr)); from seamline.app.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    return set(proc.stderr.split()), proc.stdout


def test_predict_of_a_local_file_imports_only_what_it_needs(tmp_path):
    """Fast start: no dashboard, no cluster, no AOI reader, no torch._dynamo nor sympy (the
    .pt2 loader's, 1.2 s) for a plain predict; `predict --help` imports not even torch."""
    import json

    src = write_raster(_scene(64, 64), tmp_path / "scene.tif")
    heavy = {"panel", "holoviews", "geoviews", "bokeh", "datashader", "distributed",
             "geopandas", "pyogrio", "sympy", "torch._dynamo", "onnxruntime"}
    loaded, out = _modules_loaded(["predict", str(src), str(tmp_path / "o.tif"),
                                   "--precision", "fp32"])  # fmt: skip
    assert json.loads(out)["tiles"] == 1 and "seamline.core.predict.stream" in loaded
    assert not heavy & loaded, heavy & loaded
    loaded, out = _modules_loaded(["predict", "--help"])
    assert "--precision" in out and "seamline.app.predict_cli" in loaded
    assert not (heavy | {"torch", "xarray"}) & loaded
