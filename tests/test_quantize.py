"""INT8 quantization (ONNX Runtime), the latency report and the warm model cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.demo.train import demo_calibration
from seamline.core.errors import BandMismatchError, InvalidArgumentError
from seamline.core.models.modelio import load_model
from seamline.core.models.onnx import OnnxModule
from seamline.core.optimise.latency import MIN_RUNS, measure_latency, model_size_bytes
from seamline.core.optimise.quantize import (
    INT8_OPS,
    QuantizationWarning,
    calibration_tiles,
    quantize,
    save_quantized,
)
from seamline.core.predict.scene import predict_scene
from seamline.core.predict.tiling import predict_tiled
from seamline.core.serve.cache import ModelCache
from tests.conftest import foreign_model, write_tif


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def int8(demo):
    return quantize(demo, demo_calibration(demo))


def test_int8_runs_integer_kernels_in_a_third_of_the_size(demo, int8):
    assert int8.precision == "int8" and isinstance(int8.module, OnnxModule)
    ops = int8.module.kernel_ops()  # the graph ONNX Runtime runs, after its fusions
    assert ops["QLinearConv"] >= 11  # every convolution of the U-Net, in integers
    assert not {"Conv", "BatchNormalization"} & set(ops)  # no float convolution left
    assert set(INT8_OPS) & set(ops)
    assert model_size_bytes(int8) <= model_size_bytes(demo) / 3  # 0.31: the rest is graph
    assert int8.metadata["quantization"]["fp32_layers"] == []


def test_int8_agrees_with_fp32_on_a_held_out_scene(demo, int8):
    scene, labels = make_scene(256, 256, seed=903)
    kw = {"tile_size": 128, "overlap": 32, "device": "cpu"}
    fp32_map, int8_map = (predict_scene(m, scene, **kw).values for m in (demo, int8))
    assert (fp32_map == int8_map).mean() >= 0.99
    assert (int8_map == labels.values).mean() >= 0.97
    assert predict_scene(int8, scene, **kw).attrs["precision"] == "int8"


def test_saved_int8_model_loads_without_recalibrating(tmp_path, int8):
    path = save_quantized(int8, tmp_path / "demo_int8.onnx")
    again = load_model(path)
    assert again.precision == "int8" and again.bands == int8.bands
    assert again.stats.fingerprint() == int8.stats.fingerprint()
    x = np.random.default_rng(0).normal(size=(6, 100, 130)).astype(np.float32)
    kw = {"tile_size": 64, "overlap": 16, "align": 4, "device": "cpu"}
    np.testing.assert_array_equal(
        predict_tiled(again.module, x, **kw), predict_tiled(int8.module, x, **kw)
    )


def test_saving_an_fp32_model_as_int8_is_refused(tmp_path, demo, int8):
    with pytest.raises(ValueError, match="quantize it before saving"):
        save_quantized(demo, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="saved as .onnx"):
        save_quantized(int8, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


class _Bessel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def test_unsupported_layer_falls_back_to_fp32_with_a_warning_naming_it():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), _Bessel()).eval()
    model = load_model(module)
    tiles = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with pytest.warns(QuantizationWarning, match=r"layer '1' \(_Bessel"):
        same = quantize(model, tiles)
    assert same is model and same.precision == "fp32"


def test_calibration_with_the_wrong_bands_is_a_clear_error(demo, tmp_path):
    with pytest.raises(BandMismatchError, match="must be \\(n, 6, t, t\\)"):
        quantize(demo, np.zeros((2, 3, 64, 64), dtype=np.float32))
    scene = make_scene(64, 64, seed=1)[0].isel(band=[0, 1, 2])
    with pytest.raises(BandMismatchError, match="lack"):
        calibration_tiles(scene, demo)
    with pytest.raises(InvalidArgumentError, match="needs a calibration scene.*--calibration"):
        demo_calibration(load_model(torch.nn.Conv2d(3, 2, 1)))  # the demo's scenes are its own


def test_calibration_tiles_are_spread_and_normalised(demo):
    scene = make_scene(300, 400, seed=2)[0]
    tiles = calibration_tiles(scene, demo, tile_size=64, count=9)
    assert tiles.shape == (9, 6, 64, 64) and np.isfinite(tiles).all()
    assert abs(float(tiles.mean())) < 1.0  # z-scored with the model's statistics
    assert len({float(t.sum()) for t in tiles}) == 9  # nine different windows


def test_latency_report_and_warm_cache(demo):
    report = measure_latency(demo, tile_size=64, batch_size=2)
    assert report.runs == MIN_RUNS and report.batch_ms_p95 >= report.batch_ms_p50 > 0
    assert report.tile_ms_p50 == pytest.approx(report.batch_ms_p50 / 2)
    assert report.size_mb == pytest.approx(model_size_bytes(demo) / 2**20)
    with pytest.raises(ValueError, match="runs must be >= 30"):
        measure_latency(demo, runs=5)
    with pytest.raises(ValueError, match="multiple of 4"):
        measure_latency(demo, tile_size=30)
    cache = ModelCache()
    first = cache.get("demo", precision="bf16")
    assert cache.get("demo", precision="bf16") is first and len(cache) == 1
    assert first.precision == "bf16" and cache.get("demo").precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        cache.get("demo", precision="int4")


def test_cli_quantize_saves_a_model_that_predict_uses(tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    code = main(["quantize", "--out", str(out), "--tile-size", "64", "--batch-size", "2"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file() and out.with_suffix(".json").is_file()
    for key in (
        "size_mb_fp32",
        "size_mb",
        "latency_ms_p50_fp32",
        "latency_ms_p50",
        "speedup",
        "pixel_agreement",
        "miou_fp32",
        "miou",
    ):
        assert isinstance(report[key], float), key
    assert report["size_mb"] < report["size_mb_fp32"] and report["pixel_agreement"] >= 0.99
    assert report["miou_fp32"] - report["miou"] <= 0.01

    scene = make_scene(96, 96, seed=4)[0]
    src = write_tif(tmp_path / "scene.tif", scene.values, descriptions=list(scene.band.values))
    code = main(
        [
            "predict",
            str(src),
            str(tmp_path / "c.tif"),
            "--model",
            str(out),
            "--tile-size",
            "64",
            "--overlap",
            "16",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["precision"] == "int8"
    code = main(
        [
            "predict",
            str(src),
            str(tmp_path / "d.tif"),
            "--precision",
            "int8",
            "--tile-size",
            "64",
            "--overlap",
            "16",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["precision"] == "int8"


def test_cli_bench_and_bad_calibration(tmp_path, capsys):
    code = main(["bench", "--tile-size", "64", "--json", "--precisions", "fp32", "int8"])
    rows = json.loads(capsys.readouterr().out)["bench"]
    assert code == 0 and [r["precision"] for r in rows] == ["fp32", "int8"]
    assert rows[1]["size_mb"] < rows[0]["size_mb"]
    bad = write_tif(tmp_path / "rgb.tif", np.ones((3, 32, 32), dtype=np.uint16))
    code = main(["quantize", "--calibration", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "lack" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    pixel = make_scene(1, 1, seed=0)[0]  # review: a 1 x 1 px scene broke ONNX Runtime's Resize
    code = main(["quantize", "--calibration", str(write_raster(pixel, tmp_path / "one.tif")),
                 "--out", str(tmp_path / "q.onnx")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "1 x 1 px, too small" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q.onnx").exists()


def test_parallel_forward_runs_single_threaded_replicas_with_the_same_output(int8):
    tiles = torch.from_numpy(calibration_tiles(make_scene(256, 256, seed=5)[0], int8, count=4))
    two = OnnxModule(int8.module.onnx_bytes, align=int8.align, threads=2)
    forward, calls = two.parallel_forward()
    assert calls == 2 and two._replicas.qsize() == 2  # two 1-thread sessions, one per call
    four = OnnxModule(int8.module.onnx_bytes, align=int8.align, threads=4)
    assert four.parallel_forward()[1] == 2  # two calls of 2 threads: not one session per core
    np.testing.assert_array_equal(forward(tiles).numpy(), two(tiles).numpy())
    one = OnnxModule(int8.module.onnx_bytes, align=int8.align, threads=1)
    assert one.parallel_forward() == (one.forward, 1)  # one thread: nothing to run beside it
    image = np.random.default_rng(2).normal(size=(6, 300, 260)).astype(np.float32)
    kw = {"tile_size": 128, "overlap": 32, "align": int8.align, "device": "cpu"}
    np.testing.assert_allclose(predict_tiled(two, image, **kw), predict_tiled(one, image, **kw),
                               rtol=0, atol=1e-6)  # fmt: skip


def test_a_torch_export_archive_becomes_int8(tmp_path):
    # .pt2 modules refuse .eval(): the export step used to leave them FP32 with a warning
    model = load_model(foreign_model(tmp_path))
    scene = make_scene(96, 96, seed=3)[0]
    int8 = quantize(model, make_scene(256, 256, seed=4)[0])
    assert int8.precision == "int8" and isinstance(int8.module, OnnxModule)
    fp32_ids = predict_scene(model, scene, tile_size=64, overlap=16).values
    int8_ids = predict_scene(int8, scene, tile_size=64, overlap=16).values
    assert (fp32_ids == int8_ids).mean() > 0.95
