"""Model files run no code when loaded unless trust_model=True / --trust-model."""

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seamline.app.cli import main
from seamline.core.demo.unet import UNet
from seamline.core.errors import InputFileError, UntrustedModelError
from seamline.core.models.modelio import load_model
from tests.conftest import write_tif


class Payload:
    """Unpickling it creates ``marker``: what a hostile model file would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def full_model(tmp_path) -> Path:
    """A pickled full model, ``torch.save(model)``."""
    torch.manual_seed(0)
    path = tmp_path / "full.pt"
    torch.save(UNet(bands=6, classes=5), path)
    return path


def test_a_pickled_full_model_needs_trust(full_model):
    with pytest.raises(UntrustedModelError, match="--trust-model") as caught:
        load_model(full_model)
    assert str(full_model) in str(caught.value) and "\n" not in str(caught.value)
    model = load_model(full_model, trust_model=True)
    assert isinstance(model.module, UNet) and model.bands == tuple(f"band_{i}" for i in range(1, 7))


def test_a_hostile_pickle_does_not_run_without_trust(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "hostile.pt"
    torch.save(Payload(marker), path)
    with pytest.raises(UntrustedModelError, match="pickled Python objects"):
        load_model(path)
    assert not marker.exists()
    with pytest.raises(InputFileError, match="not a model, state dict or checkpoint"):
        load_model(path, trust_model=True)
    assert marker.exists()  # trusted, its code ran: why the flag exists


def test_a_class_outside_core_models_is_not_imported_without_trust(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "thirdparty_net.py").write_text(
        f"from pathlib import Path\nimport torch\nPath({str(marker)!r}).touch()\n"
        "class Net(torch.nn.Conv2d):\n    def __init__(self):\n        super().__init__(6, 5, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(nn.Conv2d(6, 5, 1).state_dict(), tmp_path / "net.pt")
    (tmp_path / "net.json").write_text(json.dumps({"model_class": "thirdparty_net:Net"}))
    with pytest.raises(UntrustedModelError, match="thirdparty_net:Net.*--trust-model"):
        load_model(tmp_path / "net.pt")
    with pytest.raises(UntrustedModelError):  # the CLI's --model-class is an import path too
        load_model(tmp_path / "net.pt", model_class="os:system")
    assert not marker.exists() and "thirdparty_net" not in sys.modules
    assert load_model(tmp_path / "net.pt", trust_model=True).module.out_channels == 5
    assert marker.exists()
    monkeypatch.delitem(sys.modules, "thirdparty_net")


def test_seamlines_own_classes_and_checkpoints_need_no_trust(tmp_path):
    net = UNet(bands=6, classes=5)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "lr": 1e-3, "state_dict": net.state_dict()}, path)
    sidecar = {"model_class": "seamline.core.demo.unet:UNet", "init": {"bands": 6, "classes": 5}}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    loaded = load_model(path).module.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in net.state_dict().items())
    with pytest.raises(InputFileError, match="not a torch.nn.Module class"):
        load_model(path, model_class="seamline.core.demo.unet:_double_conv")  # a function


def _pt2(tmp_path: Path, name: str = "plain.pt2", members: dict[str, bytes] | None = None) -> Path:
    """A torch.export archive of a 1 x 1 convolution with ``members`` replaced or added, and
    a sidecar naming its bands."""
    path, members = tmp_path / name, members or {}
    program = torch.export.export(nn.Conv2d(6, 5, 1), (torch.randn(1, 6, 8, 8),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        root = src.namelist()[0].partition("/")[0]
        for name in src.namelist():
            dst.writestr(name, members.get(name.partition("/")[2]) or src.read(name))
        for name in members.keys() - {n.partition("/")[2] for n in src.namelist()}:
            dst.writestr(f"{root}/{name}", members[name])
    path.with_suffix(".json").write_text(json.dumps({"bands": list("abcdef")}))
    return path


def test_pt2_archives_load_untrusted_only_without_code(tmp_path):
    assert load_model(_pt2(tmp_path)).bands == tuple("abcdef")
    marker, buffer = tmp_path / "ran", io.BytesIO()
    torch.save(Payload(marker), buffer)  # torch.export.load would unpickle it unsafely
    hostile = _pt2(tmp_path, "hostile.pt2", {"data/sample_inputs/model.pt": buffer.getvalue()})
    with pytest.raises(UntrustedModelError, match="pickled Python objects.*--trust-model"):
        load_model(hostile)
    assert not marker.exists()
    with pytest.raises(InputFileError, match="could not be loaded"):
        load_model(hostile, trust_model=True)  # trusted, torch runs the payload, then fails
    assert marker.exists()
    compiled = _pt2(tmp_path, "compiled.pt2", {"data/aotinductor/model/model.so": b"\x7fELF"})
    with pytest.raises(UntrustedModelError, match="compiled code"):
        load_model(compiled)


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "scene.tif", "out.tif"],
        ["quantize", "--out", "out.onnx"],
        ["bench", "--precisions", "fp32"],
    ],
)
def test_cli_refuses_a_full_model_without_trust_model(
    full_model, small_tif, tmp_path, capsys, command
):
    paths = {"scene.tif": small_tif, **{c: tmp_path / c for c in ("out.tif", "out.onnx")}}
    command = [paths.get(c, c) for c in command]
    assert main([*map(str, command), "--model", str(full_model)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(full_model) in err and "--trust-model" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "out.onnx").exists()


def test_cli_loads_a_full_model_with_trust_model(full_model, capsys):
    argv = ["bench", "--model", str(full_model), "--precisions", "fp32", "--tile-size", "32",
            "--json", "--trust-model"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["bench"][0]["precision"] == "fp32"


def test_drift_commands_take_trust_model(full_model, tmp_path, capsys):
    data = np.random.default_rng(1).integers(100, 5000, size=(6, 64, 64), dtype=np.uint16)
    scene = write_tif(tmp_path / "scene.tif", data,
                      descriptions=tuple(f"band_{i}" for i in range(1, 7)))  # the model's bands
    baseline = tmp_path / "baseline.json"
    argv = ["drift", "baseline", str(scene), "--out", str(baseline), "--model", str(full_model)]
    assert main(argv) == 2  # refused, one sentence naming the flag, nothing written
    err = capsys.readouterr().err.strip()
    assert "--trust-model" in err and len(err.splitlines()) == 1 and not baseline.exists()
    assert main([*argv, "--trust-model"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(full_model)
    check = ["drift", "check", str(scene), "--baseline", str(baseline), "--db",
             str(tmp_path / "h.db"), "--time", "2024-05-01"]  # fmt: skip
    assert main(check) == 2 and "--trust-model" in capsys.readouterr().err  # the baseline's model
    assert not (tmp_path / "h.db").exists()
    assert main([*check, "--trust-model"]) == 0
