"""The dashboard's 'Recorded checks' section (issue #21): the history `predict --baseline`
writes, one row per check with its driver, score over time; missing and empty histories
are one sentence."""

from __future__ import annotations

import pytest

from seamline.app.cli import build_parser, main, serve_command
from seamline.app.cli_args import HISTORY_ENV
from seamline.app.layout import create_sections
from seamline.app.models import ModelCache
from seamline.components.history_view import HistoryView
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.monitor.history import History


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    folder = tmp_path_factory.mktemp("history")
    june = write_raster(make_scene(192, 192, seed=30)[0], folder / "june.tif")
    baseline = folder / "baseline.json"
    assert main(["drift", "baseline", str(june), "--out", str(baseline), "--model",
                 "demo"]) == 0  # fmt: skip
    db = folder / "history.sqlite"
    for day, seed in ((3, 31), (1, 30)):  # recorded out of time order
        scene = write_raster(make_scene(192, 192, seed=seed)[0], folder / f"s{day}.tif")
        assert main(["predict", str(scene), str(folder / f"c{day}.tif"), "--precision", "fp32",
                     "--baseline", str(baseline), "--db", str(db), "--time",
                     f"2026-07-0{day}"]) == 0  # fmt: skip
    return db


def test_one_row_per_check_in_time_order_with_its_driver(history):
    view = HistoryView(db=str(history))
    checks = view.checks
    assert list(checks["scene"].map(lambda s: s.rsplit("/", 1)[-1])) == ["s1.tif", "s3.tif"]
    assert checks["time"].is_monotonic_increasing and view.message == ""
    assert (checks["drift"] == (checks["score"] > 1)).all()
    assert not checks["driver"].str.startswith("scene").any()  # a metric, not the total
    with History(history, create=False) as h:
        frame = h.frame()
    for _, row in checks.iterrows():  # the driver is the metric of the highest ratio
        mine = frame[(frame["scene"] == row["scene"]) & (frame["feature"] != "scene")]
        ratios = (mine["value"] / mine["threshold"]).dropna()
        top = mine.loc[ratios.idxmax()]
        assert row["driver"] == f"{top['feature']} {top['metric']}"
    assert view.__panel__() is not None


def test_a_missing_or_empty_history_is_one_sentence(tmp_path):
    missing = HistoryView(db=str(tmp_path / "none.sqlite"))
    assert missing.checks is None and "does not exist" in missing.message
    assert not (tmp_path / "none.sqlite").exists()  # never created by looking
    History(tmp_path / "empty.sqlite").close()
    empty = HistoryView(db=str(tmp_path / "empty.sqlite"))
    assert empty.checks.empty and "No check recorded yet" in empty.message


def test_the_section_appears_with_serve_history(history, tmp_path):
    titles = create_sections(ModelCache(), history=str(history)).tabs._names  # the tab titles
    assert titles[-1] == "Recorded checks"
    assert "Recorded checks" not in create_sections(ModelCache(), history="").tabs._names
    args = build_parser().parse_args(["serve", "--history", str(history)])
    _, env = serve_command(args)
    assert env[HISTORY_ENV] == str(history.resolve())
