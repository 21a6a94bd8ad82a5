"""Georeferenced prediction: the demo model, user models, out-of-core files, the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import torch

from seamline.app.cli import EXIT_USER_ERROR, main
from seamline.core.data.io import open_raster, write_raster
from seamline.core.demo.data import sentinel2_aoi, sentinel2_sample
from seamline.core.demo.synthetic import make_scene
from seamline.core.demo.train import HELD_OUT_SEEDS
from seamline.core.demo.unet import UNet
from seamline.core.errors import BandMismatchError, InputFileError, InvalidArgumentError
from seamline.core.metrics import mean_iou
from seamline.core.models.modelio import load_model, save_model, with_precision
from seamline.core.predict.blocks import CLASS_NODATA, class_ids
from seamline.core.predict.scene import predict_scene


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_demo_model_ships_with_its_metadata(demo):
    assert demo.bands == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert len(demo.classes) == 5 and len(demo.colors) == 5
    assert demo.stats is not None and demo.stats.bands == demo.bands
    assert demo.align == 4 and 10 <= demo.receptive_radius <= 64
    assert demo.metadata["held_out"]["miou"] > 0.8
    assert sum(p.numel() * 4 for p in demo.module.parameters()) < 2e6


def test_predict_scene_is_on_the_scene_grid_and_accurate(demo):
    scene, labels = make_scene(300, 260, seed=HELD_OUT_SEEDS[0])
    pred = predict_scene(demo, scene, tile_size=128, overlap=32)
    assert pred.dims == ("y", "x") and pred.dtype == np.uint8
    assert pred.rio.crs == scene.rio.crs and pred.rio.transform() == scene.rio.transform()
    assert mean_iou(labels.values, pred.values, 5) > 0.8
    probs = predict_scene(demo, scene, tile_size=128, overlap=32, probabilities=True)
    assert probs.dims == ("class", "y", "x")
    np.testing.assert_allclose(probs.sum("class").values, 1, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax("class").values, pred.values)


def test_demo_map_of_the_real_sentinel2_sample_is_plausible(demo):
    pred = predict_scene(demo, sentinel2_sample(), tile_size=128, overlap=32)
    shares = np.bincount(pred.values.ravel(), minlength=5) / pred.size
    # An arid mountain scene (NDVI ~0.08): mostly bare soil, hardly any water or vegetation.
    assert shares[demo.classes.index("bare soil")] > 0.5
    assert shares[demo.classes.index("water")] < 0.05


def test_nodata_pixels_stay_nodata(demo):
    scene, _ = make_scene(128, 128, seed=1)
    scene[:, :20, :] = 0
    pred = predict_scene(demo, scene, tile_size=64, overlap=16)
    assert (pred.values[:20] == CLASS_NODATA).all() and (pred.values[20:] != CLASS_NODATA).all()


def test_band_mismatch_is_caught_before_any_work(demo, shared_data):
    landsat = open_raster(shared_data / "landsat" / "RGB.byte.tif")
    with pytest.raises(BandMismatchError, match="required by model 'demo'"):
        predict_scene(demo, landsat)


def test_user_models_state_dict_export_and_module(tmp_path, demo):
    scene, _ = make_scene(96, 96, seed=2)
    reference = predict_scene(demo, scene, tile_size=64, overlap=16, probabilities=True)
    path = save_model(demo, tmp_path / "mine.pt", model_class="seamline.core.demo.unet:UNet")
    again = load_model(path)
    assert again.bands == demo.bands and again.stats == demo.stats
    np.testing.assert_allclose(
        predict_scene(again, scene, tile_size=64, overlap=16, probabilities=True), reference,
        atol=1e-6)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(demo.module.eval(), (torch.zeros(2, 6, 64, 64),),
                                   dynamic_shapes={"x": {0: batch}})
    torch.export.save(exported, tmp_path / "mine.pt2")
    (tmp_path / "mine.pt2").with_suffix(".json").write_text(json.dumps(demo.sidecar()))
    pt2 = load_model(tmp_path / "mine.pt2")
    np.testing.assert_allclose(
        predict_scene(pt2, scene, tile_size=64, overlap=16, probabilities=True), reference,
        atol=1e-5)
    plain = load_model(UNet(bands=6, classes=5))
    assert plain.bands == tuple(f"band_{i}" for i in range(1, 7))
    with pytest.raises(InputFileError, match="without a class"):
        torch.save(demo.module.state_dict(), tmp_path / "bare.pt")
        load_model(tmp_path / "bare.pt")


def test_bf16_agrees_with_fp32(demo):
    scene, _ = make_scene(128, 128, seed=3)
    fp32 = predict_scene(demo, scene, tile_size=64, overlap=16)
    bf16 = predict_scene(with_precision(demo, "bf16"), scene, tile_size=64, overlap=16)
    assert np.mean(fp32.values == bf16.values) > 0.95
    int8 = replace(demo, precision="int8")  # as a quantized .onnx loads: no FP32 weights
    with pytest.raises(InvalidArgumentError, match="is INT8: pass its FP32 model to run it at"):
        with_precision(int8, "bf16")  # autocast over it ran INT8, labelled bf16


def test_predict_cli_with_aoi_prints_json_and_writes_cog(tmp_path, capsys):
    src = write_raster(sentinel2_sample(), tmp_path / "s2.tif")
    aoi = tmp_path / "aoi.geojson"
    sentinel2_aoi().to_file(aoi)
    out = tmp_path / "classes.tif"
    code = main(["predict", str(src), str(out), "--aoi", str(aoi), "--tile-size", "128",
                 "--overlap", "32", "--cog"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("tiles", "seconds", "megapixels_per_s", "tile_ms_p50", "tile_ms_p95",
                "peak_rss_mb"):
        assert key in report
    assert 0 < report["forward_s"] < report["seconds"]  # the model's calls, within the run
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = ds.read(1)
        assert ds.nodata == CLASS_NODATA and ds.width < 300
        assert (classes == CLASS_NODATA).any() and (classes != CLASS_NODATA).any()


def test_predict_cli_bad_inputs(tmp_path, capsys, shared_data):
    out = tmp_path / "out.tif"
    cases = [
        (["predict", str(shared_data / "landsat" / "RGB.byte.tif"), str(out)], "required by"),
        (["predict", str(tmp_path / "none.tif"), str(out)], "does not exist"),
        (["predict", str(shared_data / "landsat" / "RGB.byte.tif"), str(out), "--model",
          str(tmp_path / "none.pt")], "does not exist"),
    ]
    for argv, fragment in cases:
        assert main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err and err.count("\n") == 1
        assert not out.exists()


def test_prepared_with_model_stats_equals_raw_and_other_stats_are_refused(tmp_path, capsys):
    src = write_raster(sentinel2_sample(), tmp_path / "s2.tif")
    ok, other = tmp_path / "ok.tif", tmp_path / "other.tif"
    assert main(["prepare", str(src), str(ok), "--stats", "demo"]) == 0
    assert main(["prepare", str(src), str(other), "--fit-stats", str(tmp_path / "own.json")]) == 0
    capsys.readouterr()
    tiling = {"tile_size": 128, "overlap": 32}
    raw = predict_scene("demo", open_raster(src), **tiling)
    prepared = predict_scene("demo", open_raster(ok), **tiling)
    np.testing.assert_array_equal(prepared.values, raw.values)
    with pytest.raises(BandMismatchError, match="other band statistics"):
        predict_scene("demo", open_raster(other), **tiling)


def test_class_ids_equal_numpy_argmax_ties_included():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 3, size=(5, 64, 48)).astype(np.float32)  # many ties
    scores[:, 0, 0] = -np.inf
    ids = class_ids(scores)
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, scores.argmax(axis=0))  # the first of equal scores
    continuous = rng.normal(size=(7, 33, 17)).astype(np.float32)
    np.testing.assert_array_equal(class_ids(continuous), continuous.argmax(axis=0))


def test_no_huge_page_advice_turns_numpy_advice_off():
    from seamline.core.hardware import no_huge_page_advice

    no_huge_page_advice()
    assert no_huge_page_advice() is False  # it reports the previous setting: already off


def test_predictions_are_georeferenced_without_copying_their_pixels():
    """rioxarray's write_crs/write_transform/write_nodata copy deeply unless in place: every
    block was copied three times (peak RSS 1135-1150 MB vs 964-972 MB at 4096^2 x 6 in BF16,
    0.4 s of 10 s)."""
    from seamline.core.predict.blocks import as_prediction

    scene = make_scene(200, 160, seed=3)[0]
    ids = np.zeros((200, 160), np.uint8)
    prediction = as_prediction(ids, scene, load_model("demo"))
    assert np.shares_memory(prediction.values, ids) and prediction.rio.nodata == CLASS_NODATA
    assert prediction.rio.transform() == scene.rio.transform()
