"""Third-party output and input conventions (issue #18): tuple, list and dict outputs, maps
coarser than the input, and torch.export archives with a fixed tile size."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from seamline import load_model, predict_scene, quantize
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InputFileError, InvalidArgumentError
from seamline.core.models.outputs import DenseLogits

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]


class Heads(nn.Module):
    """One 3x3 conv net returning its logits the way ``style`` says."""

    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.body = nn.Conv2d(6, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(4) if style == "quarter" else nn.Identity()

    def forward(self, x):
        y = self.pool(self.body(x))
        return {"tuple": (y, y[:, :1]), "list": [y, y * 0], "dict": {"aux": y * 0, "out": y},
                "quarter": y, "plain": y}[self.style]  # fmt: skip


@pytest.mark.parametrize("style", ["tuple", "list", "dict"])
def test_tuple_list_and_dict_outputs_give_the_plain_models_classes(style):
    scene = make_scene(96, 80, seed=2)[0]
    plain = load_model(Heads("plain"), bands=BANDS)
    plain = predict_scene(plain, scene, tile_size=64, probabilities=True)
    model = load_model(Heads(style), bands=BANDS)
    assert isinstance(model.module, DenseLogits)
    assert model.metadata["adapted_output"] in ("output[0]", "output['out']")
    ours = predict_scene(model, scene, tile_size=64, probabilities=True)
    np.testing.assert_allclose(ours.values, plain.values, atol=1e-6)


def test_a_coarser_output_is_upsampled_and_said_so():
    model = load_model(Heads("quarter"), bands=BANDS)
    assert model.metadata["adapted_output"] == "upsampled from 1/4 resolution"
    classes = predict_scene(model, make_scene(96, 80, seed=2)[0], tile_size=64)
    assert classes.shape == (96, 80)


def test_an_output_without_logits_is_one_sentence():
    class Scalar(nn.Module):
        def forward(self, x):
            return {"score": x.mean()}

    with pytest.raises(InputFileError, match=r"returns a dict, not a tensor.*\"output\""):
        load_model(Scalar(), bands=BANDS)


def test_a_pt2_with_a_fixed_tile_runs_at_it_and_names_it(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        net, (torch.zeros(2, 6, 128, 128),), dynamic_shapes={"input": {0: batch}}
    )  # only the batch is dynamic: height and width stay 128
    path = tmp_path / "static.pt2"
    torch.export.save(program, path)
    path.with_suffix(".json").write_text(json.dumps({"bands": BANDS, "classes": list("abc")}))
    model = load_model(path)
    assert model.metadata["tile_size"] == 128 and model.receptive_radius == 1
    scene = make_scene(300, 200, seed=4)[0]
    classes = predict_scene(model, scene)  # at its 128 px tile by default
    assert classes.shape == (300, 200)
    with pytest.raises(InvalidArgumentError, match="exported for 128 x 128 px tiles"):
        predict_scene(model, scene, tile_size=256)
    int8 = quantize(model, scene)  # INT8 from a .pt2, like from a state dict
    agreement = float((predict_scene(int8, scene) == classes).mean())
    assert int8.precision == "int8" and agreement > 0.95


def test_quantize_cli_takes_the_model_flags_and_measures_agreement_on_the_users_scene(
    tmp_path, capsys
):
    from seamline.app.cli import main
    from seamline.core.data.io import write_raster
    from tests.conftest import foreign_model

    model = foreign_model(tmp_path)  # a .pt2 that is not ours
    scene = write_raster(make_scene(256, 256, seed=6)[0], tmp_path / "mine.tif")
    assert main(["quantize", "--model", str(model), "--out", str(tmp_path / "no/q.onnx")]) == 2
    assert "Output folder" in capsys.readouterr().err  # at once, before any work
    code = main(["quantize", "--model", str(model), "--calibration", str(scene),
                 "--band-names", ",".join(BANDS), "--runs", "30", "--batch-size", "1"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["precision"] == "int8"
    assert report["pixel_agreement"] > 0.95 and report["miou"] is None  # no labels: none


def test_int8_of_a_model_that_is_not_the_demo_calibrates_on_the_users_scene(tmp_path):
    from fastapi.testclient import TestClient

    from seamline.app.service import create_app
    from seamline.core.data.io import geotiff_bytes
    from seamline.core.errors import SeamlineError
    from tests.conftest import foreign_model

    model = str(foreign_model(tmp_path))  # the demo's band names, but not the demo
    with pytest.raises(SeamlineError, match="needs a calibration scene .* --calibration SCENE"):
        create_app(model, precision="int8")  # no silent synthetic calibration
    scene = make_scene(256, 256, seed=8)[0]
    with TestClient(create_app(model, precision="int8", calibration=scene)) as client:
        r = client.post(
            "/predict", content=geotiff_bytes(scene), headers={"content-type": "image/tiff"}
        )
    assert r.status_code == 200


def test_a_service_refuses_at_start_a_pt2_fixed_above_its_largest_tile(tmp_path):
    """create_app checked its tiling before it knew a .pt2's own tile: a model exported for
    1100 px tiles started, and every request then ran tiles larger than the service allows."""
    from seamline.app.service import MAX_TILE_SIZE, create_app

    net = nn.Sequential(nn.Conv2d(6, 3, 1)).eval()
    side = MAX_TILE_SIZE + 76
    program = torch.export.export(net, (torch.zeros(1, 6, side, side),))
    path = tmp_path / "large.pt2"
    torch.export.save(program, path)
    path.with_suffix(".json").write_text(json.dumps({"bands": BANDS, "classes": list("abc")}))
    with pytest.raises(InvalidArgumentError, match=f"takes only {side} x {side} px tiles"):
        create_app(path, precision="fp32")
