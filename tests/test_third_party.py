"""Third-party architectures through every path (issue #18): MONAI's UNet (batch norm: local)
and SegResNet (group norm: sees the whole tile) as state dict + sidecar, torch.export archive
and nn.Module; predict, quantize and serve; the seam error at default settings, printed."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from seamline import load_model, predict_scene, quantize, save_model
from seamline.app.service import create_app
from seamline.core.data.io import geotiff_bytes
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import UntrustedModelError
from seamline.core.predict.plan import SeamWarning

nets = pytest.importorskip("monai.networks.nets", reason="MONAI is in the test extra")
BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
UNET = {"spatial_dims": 2, "in_channels": 6, "out_channels": 4, "channels": [8, 16, 32],
        "strides": [2, 2], "num_res_units": 1, "norm": "batch"}  # fmt: skip
BASICUNET = {"spatial_dims": 2, "in_channels": 6, "out_channels": 4,
             "features": [8, 8, 16, 32, 64, 8], "norm": "batch"}  # fmt: skip
SEGRESNET = {"spatial_dims": 2, "in_channels": 6, "out_channels": 4, "init_filters": 8,
             "blocks_down": [1, 2], "blocks_up": [1]}  # fmt: skip


def _trained_looking(name: str, init: dict) -> torch.nn.Module:
    """MONAI's ``name`` with seeded random weights and non-trivial batch-norm statistics, in
    eval mode."""
    torch.manual_seed(0)
    net = getattr(nets, name)(**init)
    with torch.no_grad():
        net.train()(torch.randn(4, 6, 64, 64))  # running statistics move off 0/1
    return net.eval()


def _seam_error(model, scene) -> float:
    """Max |probability difference| of the default tiling (256 px) vs one untiled pass."""
    tiled = predict_scene(model, scene, tile_size=256, probabilities=True).values
    whole = predict_scene(model, scene, tile_size=512, probabilities=True).values
    return float(np.abs(tiled - whole).max())


@pytest.fixture(scope="module")
def scene():
    return make_scene(512, 512, seed=5)[0]


@pytest.mark.parametrize(("name", "init"), [("UNet", UNET), ("BasicUNet", BASICUNET)])
def test_monai_state_dict_predicts_quantizes_and_serves(name, init, tmp_path, scene, capsys):
    net = _trained_looking(name, init)
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({
        "model_class": f"monai.networks.nets:{name}", "init": init, "bands": BANDS,
        "classes": ["water", "crop", "forest", "town"],
    }))  # fmt: skip
    with pytest.raises(UntrustedModelError, match="--trust-model"):
        load_model(path)  # importing a class outside Seamline runs its package's code
    model = load_model(path, trust_model=True)
    geometry = model.metadata["geometry"]
    assert geometry["align"] >= 4 and not geometry["non_local"]  # at least two 2x levels
    assert 0 < model.receptive_radius <= geometry["reach"]
    error = _seam_error(model, scene)
    int8 = quantize(model, scene)
    agreement = float((predict_scene(int8, scene) == predict_scene(model, scene)).mean())
    with capsys.disabled():
        print(f"\nMONAI {name}: radius {model.receptive_radius} px (reach {geometry['reach']}), "
              f"stride {geometry['align']}, seam error at the default overlap {error:.1e}, "
              f"INT8 agreement {agreement:.2%}")  # fmt: skip
    assert error < 1e-4
    assert int8.precision == "int8" and agreement > 0.95
    data = geotiff_bytes(scene.isel(x=slice(0, 128), y=slice(0, 128)))
    with TestClient(create_app(str(path), precision="fp32", trust_model=True)) as client:
        r = client.post("/predict", content=data, headers={"content-type": "image/tiff"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"


def test_monai_unet_as_pt2_with_dynamic_and_static_tiles_and_as_a_module(tmp_path, scene):
    net = _trained_looking("UNet", UNET)
    reference = predict_scene(load_model(net, bands=BANDS), scene, tile_size=256)
    batch = torch.export.Dim("batch", min=1, max=64)
    side = {"h": 4 * torch.export.Dim("h4", min=8, max=1024),  # multiples of the stride
            "w": 4 * torch.export.Dim("w4", min=8, max=1024)}  # fmt: skip
    for name, shapes in (
        ("dynamic", {"x": {0: batch, 2: side["h"], 3: side["w"]}}),
        ("static", {"x": {0: batch}}),  # as README advised: only the batch dynamic
    ):
        program = torch.export.export(net, (torch.zeros(2, 6, 256, 256),), dynamic_shapes=shapes)
        path = tmp_path / f"{name}.pt2"
        torch.export.save(program, path)
        path.with_suffix(".json").write_text(json.dumps({"bands": BANDS}))
        model = load_model(path)
        assert model.metadata.get("tile_size") == (256 if name == "static" else None)
        classes = predict_scene(model, scene)  # the static one at its own 256 px tile
        assert float((classes == reference).mean()) > 0.999, name


def test_monai_segresnet_sees_the_whole_tile_and_says_so(tmp_path, scene, capsys):
    net = _trained_looking("SegResNet", SEGRESNET)
    model = load_model(net, bands=BANDS)
    non_local = model.metadata["geometry"]["non_local"]
    assert model.receptive_radius is None and "GroupNorm" in non_local[0]
    with pytest.warns(SeamWarning, match="see the whole tile"):
        floor = _seam_error(model, scene)
    with capsys.disabled():
        print(f"\nMONAI SegResNet (GroupNorm): seam error floor at 256 px tiles {floor:.2e}")
    assert floor > 1e-4  # measured and shown, not hidden
    path = save_model(model, tmp_path / "segresnet.pt", model_class="monai.networks.nets:SegResNet")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["init"] = SEGRESNET
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    again = load_model(path, trust_model=True)
    assert again.metadata["geometry"]["non_local"] == non_local
