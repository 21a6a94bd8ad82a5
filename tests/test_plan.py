"""The default overlap covers the model's receptive field, and one that cannot is a warning
(issue #18): tiling is then exact to the measured field's tolerance."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from seamline import load_model, predict_scene
from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.onnx import OnnxModule
from seamline.core.optimise.quantize import quantize
from seamline.core.predict.plan import SeamWarning, choose_overlap, covering_overlap


def test_covering_overlap_is_twice_the_radius_for_crop_and_four_times_for_blends():
    assert covering_overlap(22, "crop") == 44 and covering_overlap(22, "cosine") == 88
    assert covering_overlap(3, "gaussian", align=8) == 16  # rounded up to the stride


def test_the_demo_model_gets_an_overlap_that_covers_its_field(recwarn):
    demo = load_model("demo")  # receptive radius 23 px, stride 4
    assert choose_overlap(demo, 512, "cosine") == 92
    assert choose_overlap(demo, 512, "crop") == 48  # 46 rounded up to the stride
    assert not [w for w in recwarn if issubclass(w.category, SeamWarning)]
    with pytest.warns(SeamWarning, match="tile size of at least 184"):
        assert choose_overlap(demo, 128, "cosine") == 64  # at most half a tile
    with pytest.warns(SeamWarning, match="receptive radius of 23 px .* needs 92 px") as caught:
        assert choose_overlap(demo, 512, "cosine", 32) == 32  # the user's choice stays
    measured = float(str(caught[0].message).split("by up to ")[1].rstrip(").").strip())
    assert 1e-4 < measured < 1  # the seam error, measured on a random probe


def test_default_tiling_equals_one_untiled_pass():
    """The demo at its default overlap, tiled 256 px over 512^2, against one 512 px tile."""
    scene = make_scene(512, 512, seed=3)[0]
    demo = load_model("demo")
    tiled = predict_scene(demo, scene, tile_size=256, probabilities=True).values
    whole = predict_scene(demo, scene, tile_size=512, probabilities=True).values
    assert np.abs(tiled - whole).max() < 1e-6  # measured: 2.4e-07 (32 px overlap: 1.5e-03)


def test_a_model_that_sees_the_whole_tile_is_named_whatever_the_overlap():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.Conv2d(8, 3, 1))
    model = load_model(net.eval())
    assert model.receptive_radius is None  # no bounded field to cover
    with pytest.warns(SeamWarning, match=r"see the whole tile \(1 \(InstanceNorm2d\)\)") as w:
        assert choose_overlap(model, 256, "cosine") == 64
    assert "differ from an untiled run by up to" in str(w[0].message)  # the floor, measured


def test_the_cli_warns_in_one_line_and_goes_on(tmp_path, capsys):
    scene = write_raster(make_scene(96, 96, seed=1)[0], tmp_path / "s.tif")
    out = tmp_path / "classes.tif"
    code = main(["predict", str(scene), str(out), "--tile-size", "64", "--overlap", "8"])
    err = capsys.readouterr().err
    assert code == 0 and out.exists()
    warning = [line for line in err.splitlines() if line.startswith("seamline predict: warning:")]
    assert len(warning) == 1 and "An overlap of 8 px does not cover" in warning[0]
    assert "SeamWarning" not in err and ".py:" not in err  # one sentence, no source line


def test_the_seam_probe_is_measured_once_per_machine(monkeypatch, tmp_path):
    """The probe cost ~1 s of every `seamline predict` that warned; now it is on disk."""
    import seamline.core.predict.plan as plan

    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path))
    first = plan.measured_seam_error(load_model("demo"), 128, 32, "cosine")
    assert 1e-4 < first < 1 and len(list((tmp_path / "seams").iterdir())) == 1
    monkeypatch.setattr(plan, "_probe_seam_error", lambda *a: pytest.fail("probed again"))
    again = load_model("demo")  # a new module, as a new process has: only the disk knows
    assert plan.measured_seam_error(again, 128, 32, "cosine") == first
    torch.manual_seed(1)
    other = load_model(type(again.module)(bands=6, classes=5), bands=list(again.bands))
    with pytest.raises(pytest.fail.Exception, match="probed again"):  # other weights
        plan.measured_seam_error(other, 128, 32, "cosine")


def test_the_seam_probe_of_an_onnx_model_is_keyed_by_its_graph(monkeypatch, tmp_path):
    """An INT8 or user's .onnx module has no weights to hash: its graph's bytes key the probe
    (it was probed in every `seamline predict --precision int8`, 0.6 s)."""
    import seamline.core.predict.plan as plan

    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path))
    demo = load_model("demo")
    tiles = np.random.default_rng(3).normal(size=(2, 6, 64, 64)).astype(np.float32)
    int8 = quantize(demo, tiles)
    first = plan.measured_seam_error(int8, 128, 32, "cosine")
    assert 1e-4 < first < 1
    monkeypatch.setattr(plan, "_probe_seam_error", lambda *a: pytest.fail("probed again"))
    same = replace(int8, module=OnnxModule(int8.module.onnx_bytes, align=int8.align))
    assert plan.measured_seam_error(same, 128, 32, "cosine") == first  # a new process's
    other = quantize(demo, tiles + 1.0)  # another calibration: another graph
    assert other.module.onnx_bytes != int8.module.onnx_bytes
    with pytest.raises(pytest.fail.Exception, match="probed again"):
        plan.measured_seam_error(other, 128, 32, "cosine")
