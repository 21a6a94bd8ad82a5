"""A model's tiling geometry measured from the model: alignment, receptive field, non-local
layers (issue #18), checked against architectures whose geometry is known by construction."""

import json

import torch
from torch import nn

from seamline import load_model
from seamline.core.diskcache import cache_dir
from seamline.core.models import geometry as geometry_module
from seamline.core.models.geometry import measure_geometry
from tests.conftest import foreign_model


def dilated() -> nn.Module:
    """3x3 then 3x3 dilated by 2: receptive radius 1 + 2 = 3 px, stride 1."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(12, 3, 1),
    ).eval()  # fmt: skip


def test_demo_unet_reach_and_alignment_match_its_architecture():
    demo = load_model("demo")  # its sidecar states both (the training script measured them)
    measured = measure_geometry(demo.module, len(demo.bands))
    # 23 px: 22 from the centre pixel alone; the impulse one pixel off the stride grid
    # reaches one further
    assert measured.reach == demo.receptive_radius == 23
    assert measured.align == demo.align == 4  # two 2x downsamplings
    assert 0 < measured.receptive_radius <= measured.reach and measured.bounded


def test_stride_and_receptive_field_of_small_known_networks():
    assert measure_geometry(dilated(), 6).reach == 3
    strided = nn.Sequential(
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 3, padding=1),
    ).eval()  # fmt: skip
    geometry = measure_geometry(strided, 6)
    assert geometry.align == 2 and geometry.bounded and geometry.reach <= 5


def test_normalisation_over_the_tile_is_named_and_unbounded():
    net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 3, 1))
    geometry = measure_geometry(net.eval(), 6)
    assert geometry.non_local == ("1 (GroupNorm)",)
    assert not geometry.bounded and geometry.align is None  # no shift reproduces the output


def test_a_model_without_a_stated_receptive_field_is_measured_once_per_machine(
    tmp_path, monkeypatch
):
    path = foreign_model(tmp_path)  # a .pt2 archive
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({k: v for k, v in json.loads(sidecar.read_text()).items()
                                   if k != "receptive_radius"}))  # fmt: skip
    model = load_model(path)
    assert model.receptive_radius == 3 and model.metadata["geometry"]["reach"] == 3
    assert len(list((cache_dir() / "geometry").glob("*.json"))) >= 1

    def not_again(*_args, **_kwargs):
        raise AssertionError("measured twice")

    monkeypatch.setattr(geometry_module, "measure_geometry", not_again)
    assert load_model(path).receptive_radius == 3  # from the cache, not measured again


def test_a_module_passed_to_the_api_is_measured():
    model = load_model(dilated())
    assert model.receptive_radius == 3 and model.align == 1
    assert model.metadata["geometry"]["non_local"] == []
