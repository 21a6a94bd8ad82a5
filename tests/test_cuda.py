"""The CUDA path: tiling, precisions, --precision auto and the file path on a GPU.

These need a CUDA GPU and skip on a machine without one (CI has none); the session notes
of issue #20 give the figures of each run on a lent GPU (benchmarks/gpu.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.modelio import load_model, with_precision
from seamline.core.optimise.auto import MIN_AGREEMENT, candidates, choose_backend
from seamline.core.optimise.quantize import calibration_tiles
from seamline.core.predict.scene import predict_scene
from seamline.core.predict.tiling import Blend, predict_tiled, seam_errors, untiled

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.fixture(scope="module")
def scene():
    return make_scene(700, 900, seed=5)[0]


@pytest.fixture(scope="module")
def image(scene):
    from seamline.core.predict.blocks import model_input

    return model_input(load_model("demo"), scene)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(0) == b.argmax(0)).mean())


@pytest.mark.parametrize("blend", list(Blend))
def test_tiles_on_cuda_equal_the_cpu(image, blend):
    model = load_model("demo").module
    kwargs = dict(tile_size=256, overlap=64, blend=blend, batch_size=4)
    cpu = predict_tiled(model, image, device="cpu", **kwargs)
    gpu = predict_tiled(model, image, device="cuda", **kwargs)
    assert gpu.shape == cpu.shape and np.isfinite(gpu).all()
    # cuDNN runs FP32 convolutions as TF32 (10-bit mantissa): close, not bit-equal
    assert np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu) < 5e-3
    assert _agreement(gpu, cpu) >= 0.999


def test_tiled_on_cuda_is_seam_free(image):
    model = load_model("demo").module
    tiled = predict_tiled(model, image, tile_size=256, overlap=64, device="cuda")
    whole = untiled(model, image, device="cuda")
    errors = seam_errors(tiled, whole)
    assert errors["rel_l2"] < 1e-2
    assert errors["border_rel_l2"] < 3 * errors["interior_rel_l2"] + 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_on_cuda_agree_with_fp32(image, precision):
    demo = load_model("demo")
    fp32 = predict_tiled(demo.module, image, tile_size=256, overlap=64, device="cpu")
    half = with_precision(load_model("demo"), precision)
    out = predict_tiled(half.module, image, tile_size=256, overlap=64, device="cuda")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert _agreement(out, fp32) >= MIN_AGREEMENT


def test_auto_measures_the_gpu_backends_and_keeps_agreeing_ones(scene):
    names = [b.name for b in candidates("cuda")]
    assert "fp16" in names and "int8" not in names
    assert ("bf16" in names) == torch.cuda.is_bf16_supported()
    demo = load_model("demo")
    tiles = calibration_tiles(scene, demo, tile_size=256, count=4)
    eager = [b for b in candidates("cuda") if not b.compile]
    choice = choose_backend(demo, tiles, tile_size=256, batch_size=4, device="cuda",
                            cache=False, backends=eager)  # fmt: skip
    rows = {m.backend: m for m in choice.measurements}
    assert set(rows) == {b.name for b in eager} and choice.device == "cuda:0"
    assert torch.cuda.get_device_name() in choice.cpu  # the GPU named beside every figure
    assert all(m.ms_per_tile > 0 and m.kept == (m.agreement >= MIN_AGREEMENT)
               for m in rows.values())  # fmt: skip
    assert rows[choice.backend].kept and choice.peaks["fp16"] > choice.peaks["fp32"] > 0


def test_predict_scene_on_cuda_is_georeferenced_like_the_cpu(scene):
    gpu = predict_scene("demo", scene, device="cuda")
    cpu = predict_scene("demo", scene, device="cpu")
    assert gpu.rio.transform() == cpu.rio.transform() and gpu.rio.crs == cpu.rio.crs
    assert float((gpu.values == cpu.values).mean()) >= 0.999


def test_predict_command_on_cuda_writes_the_cpu_classes(scene, tmp_path, capsys):
    src = write_raster(scene, tmp_path / "scene.tif")
    outs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.tif"
        main(["predict", str(src), str(out), "--device", device, "--precision", "fp32"])
        report = json.loads(capsys.readouterr().out)
        assert report["tiles"] > 0
        assert (torch.cuda.get_device_name() in report["device"]) == (device == "cuda")
        with rasterio.open(out) as ds:
            outs[device] = (ds.read(1), ds.transform, ds.crs)
    assert outs["cuda"][1:] == outs["cpu"][1:]
    assert float((outs["cuda"][0] == outs["cpu"][0]).mean()) >= 0.999


def test_fp16_on_cuda_through_the_command(scene, tmp_path, capsys):
    src = write_raster(scene, tmp_path / "scene.tif")
    out = tmp_path / "fp16.tif"
    main(["predict", str(src), str(out), "--device", "cuda", "--precision", "fp16"])
    assert json.loads(capsys.readouterr().out)["precision"] == "fp16"
    with rasterio.open(out) as ds:
        assert ds.read(1).shape == (scene.sizes["y"], scene.sizes["x"])
