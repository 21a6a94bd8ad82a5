"""Scale-out: chunked prediction on a dask.distributed LocalCluster, drift checks as tasks."""

from __future__ import annotations

import json
import pickle

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.env import get_gdal_config
from shapely.geometry import Polygon

from seamline.app.cli import main
from seamline.core.data.io import open_raster, write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InvalidArgumentError, NoDataError
from seamline.core.models.modelio import load_model
from seamline.core.models.onnx import OnnxModule
from seamline.core.monitor.batch import check_many
from seamline.core.monitor.check import check
from seamline.core.monitor.fit import fit_baseline
from seamline.core.predict.blocks import CLASS_NODATA, aligned_chunks
from seamline.core.predict.distributed import WORKER_GDAL_CACHE, connect, predict_file_distributed
from seamline.core.predict.file import predict_file
from seamline.core.predict.scene import predict_scene

# Half the overlap (24) covers the demo model's receptive radius (23): crop is exact.
TILING = {"tile_size": 96, "overlap": 48}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def client():
    with connect("local", n_workers=2, processes=False) as client:
        yield client


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    scene, _ = make_scene(212, 236, seed=4)
    scene[:, :6, :] = 0  # a nodata stripe along the top
    return scene, write_raster(scene, tmp_path_factory.mktemp("dist") / "scene.tif")


@pytest.mark.parametrize(
    ("length", "size", "align", "minimum", "expected"),
    [
        (300, 96, 4, 48, (96, 96, 108)),  # a 12-pixel rest merges into the last chunk
        (340, 96, 4, 48, (96, 96, 96, 52)),
        (100, 30, 4, 1, (32, 32, 32, 4)),  # rounded up to the stride
        (50, 96, 4, 48, (50,)),
        (256, 64, 8, 80, (80, 80, 96)),  # at least the minimum
    ],
)
def test_aligned_chunks(length, size, align, minimum, expected):
    chunks = aligned_chunks(length, size, align=align, minimum=minimum)
    assert chunks == expected and sum(chunks) == length
    assert all(c % align == 0 for c in chunks[:-1])


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_chunked_prediction_equals_the_in_process_engine(client, demo, scene_file, blend):
    scene, path = scene_file
    lazy = predict_scene(demo, open_raster(path, chunks={"band": -1, "y": 64, "x": 64}),
                         probabilities=True, blend=blend, **TILING)  # fmt: skip
    assert len(lazy.data.chunks[1]) > 1 and len(lazy.data.chunks[2]) > 1  # really chunked
    got = client.compute(lazy).result()
    expected = predict_scene(demo, scene, probabilities=True, blend=blend, **TILING)
    assert got.rio.transform() == expected.rio.transform() and got.rio.crs == scene.rio.crs
    valid = np.isfinite(expected.values)
    np.testing.assert_array_equal(np.isfinite(got.values), valid)
    diff = np.linalg.norm(got.values[valid] - expected.values[valid])
    assert diff / np.linalg.norm(expected.values[valid]) < 1e-3
    if blend == "crop":  # each pixel from a tile covering its receptive field: float noise only
        np.testing.assert_allclose(got.values, expected.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.fmax(got.values, -1).argmax(0),
                                      np.fmax(expected.values, -1).argmax(0))  # fmt: skip
        classes = predict_scene(demo, open_raster(path, chunks=64), blend="crop", **TILING)
        np.testing.assert_array_equal(client.compute(classes).result().values,
                                      predict_scene(demo, scene, blend="crop", **TILING).values)


def test_distributed_file_equals_predict_file_and_is_a_cog(client, demo, scene_file, tmp_path):
    _, path = scene_file
    reference = predict_file(path, tmp_path / "ref.tif", model=demo, blend="crop", **TILING)
    report = predict_file_distributed(path, tmp_path / "dist.tif", model=demo, scheduler=client,
                                      block_size=96, cog=True, blend="crop", **TILING)  # fmt: skip
    assert report["bands"] == 2 and report["workers"] == 2
    assert report["shape"] == reference["shape"]
    assert report["tiles"] == reference["tiles"] == report["grid_tiles"]  # each tile once
    with rasterio.open(tmp_path / "ref.tif") as ref, rasterio.open(tmp_path / "dist.tif") as out:
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (out.crs, out.transform, out.nodata) == (ref.crs, ref.transform, CLASS_NODATA)
        np.testing.assert_array_equal(out.read(1), ref.read(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.tif", "ref.tif"]


@pytest.mark.parametrize("blend", ["cosine", "linear"])
@pytest.mark.parametrize("block_size", [40, 100])
def test_bands_of_one_grid_run_each_tile_once_and_equal_the_stream(client, demo, tmp_path,
                                                                   blend, block_size):  # fmt: skip
    """Bands whose tile rows share rows (added on the client), one band whose tiles are all
    nodata (skipped, its rows nodata), probabilities: the stream's, to float rounding."""
    scene, _ = make_scene(300, 150, seed=8)
    scene[:, 96:240, :] = 0  # two whole tile rows of nodata at tile 96 / overlap 48
    path = write_raster(scene, tmp_path / "gap.tif")
    options = {"blend": blend, "probabilities": True, **TILING}
    reference = predict_file(path, tmp_path / "ref.tif", model=demo, **options)
    report = predict_file_distributed(path, tmp_path / "dist.tif", model=demo, scheduler=client,
                                      block_size=block_size, **options)  # fmt: skip
    assert report["tiles"] == reference["tiles"] < report["grid_tiles"]  # empty tiles skipped
    assert report["bands"] == 2 if block_size == 100 else report["bands"] >= 4  # 1 row each
    with rasterio.open(tmp_path / "ref.tif") as ref, rasterio.open(tmp_path / "dist.tif") as out:
        expected, got = ref.read(), out.read()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))  # the same nodata
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # sums grouped per band
    assert np.isnan(got[:, 96:240]).all() and not np.isnan(got[:, :96]).any()


def test_aoi_crops_and_masks_as_predict_file_does(client, demo, scene_file, tmp_path):
    scene, path = scene_file
    x0, y0 = scene.rio.transform() * (30, 50)  # a triangle inside the scene, in its CRS
    x1, y1 = scene.rio.transform() * (200, 180)
    aoi = gpd.GeoDataFrame(geometry=[Polygon([(x0, y0), (x1, y0), (x0, y1)])],
                           crs=scene.rio.crs).to_crs("EPSG:4326")  # fmt: skip
    predict_file(path, tmp_path / "ref.tif", model=demo, aoi=aoi, blend="crop", **TILING)
    predict_file_distributed(path, tmp_path / "dist.tif", model=demo, aoi=aoi, block_size=64,
                             scheduler=client, blend="crop", **TILING)  # fmt: skip
    with rasterio.open(tmp_path / "ref.tif") as ref, rasterio.open(tmp_path / "dist.tif") as out:
        assert out.shape == ref.shape == (130, 170) and out.transform == ref.transform
        classes = out.read(1)
        np.testing.assert_array_equal(classes, ref.read(1))
    assert 0 < (classes == CLASS_NODATA).mean() < 0.6  # outside the triangle


def test_predict_cli_with_scheduler_address(client, scene_file, tmp_path, capsys):
    scene, path = scene_file
    out = tmp_path / "classes.tif"
    code = main(["predict", str(path), str(out), "--scheduler", client.scheduler.address,
                 "--tile-size", "96", "--overlap", "48", "--blend", "crop",
                 "--block-size", "128", "--precision", "fp32"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["workers"] == 2 and report["bands"] == 2
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1),
                                      predict_scene("demo", scene, blend="crop", **TILING).values)
    caches = client.run(lambda: get_gdal_config("GDAL_CACHEMAX"))  # set when the CLI joined
    assert list(caches.values()) == [WORKER_GDAL_CACHE] * 2


def test_all_nodata_raster_fails_and_leaves_no_file(client, tmp_path):
    scene, _ = make_scene(64, 64, seed=1)
    path = write_raster(scene * 0, tmp_path / "empty.tif")
    with pytest.raises(NoDataError, match="no valid pixels"):
        predict_file_distributed(path, tmp_path / "out.tif", model="demo", scheduler=client,
                                 block_size=32, **TILING)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif"]


def test_unreachable_scheduler_is_one_sentence():
    with pytest.raises(InvalidArgumentError, match="Cannot reach the dask scheduler"):
        with connect("tcp://127.0.0.1:9", timeout=0.5):
            pass


def test_onnx_module_travels_to_workers_by_pickle():
    from onnx import TensorProto, helper

    shape = ["batch", 6, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["logits"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)],
    )  # fmt: skip
    onnx_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   ir_version=8)
    module = OnnxModule(onnx_bytes.SerializeToString(), align=4)
    again = pickle.loads(pickle.dumps(module))
    x = torch.randn(2, 6, 16, 16)
    assert again is not module and again.session is not module.session and again.align == 4
    torch.testing.assert_close(again(x), torch.relu(x))


def test_check_many_equals_sequential_checks(client, tmp_path):
    scenes = [make_scene(96, 96, seed=s)[0] for s in range(4)]
    baseline = fit_baseline(scenes[:2], "demo", tile_size=32)
    paths = [write_raster(s, tmp_path / f"s{i}.tif") for i, s in enumerate(scenes[2:])]
    results = check_many(paths, baseline, model="demo", client=client)
    expected = [check(open_raster(p).load(), baseline, model="demo") for p in paths]
    assert [r.to_dict() for r in results] == [e.to_dict() for e in expected]
    assert all(r.prediction is None for r in results)
    kept = check_many(paths[:1], baseline, model="demo", client=client, keep_predictions=True)
    np.testing.assert_array_equal(kept[0].prediction.values, expected[0].prediction.values)
