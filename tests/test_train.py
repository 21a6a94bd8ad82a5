"""`seamline train-demo`: seeded and reproducible, saves a loadable model with its metadata."""

import json

import torch

from seamline.app.cli import main
from seamline.core.models.modelio import load_model


def test_train_demo_is_reproducible_and_loadable(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["train-demo", "--out", str(tmp_path / f"{name}.pt"), "--steps", "3"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert 0 <= report["held_out"]["miou"] <= 1 and report["receptive_radius"] > 0
    a, b = load_model(tmp_path / "a.pt"), load_model(tmp_path / "b.pt")
    for (name, pa), pb in zip(a.module.state_dict().items(), b.module.state_dict().values(),
                              strict=True):
        assert torch.equal(pa, pb), name
    assert a.stats == b.stats and a.classes[0] == "water"
