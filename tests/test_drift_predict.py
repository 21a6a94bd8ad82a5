"""Drift gathered during predict (issue #21): ``predict --baseline --db`` records, from the
rows it streams, the very check ``drift check`` records after reading the scene again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.monitor.gather import _Thinned
from seamline.core.monitor.history import History
from seamline.core.monitor.sampling import thin
from tests.test_cli import assert_one_sentence_error


@pytest.mark.parametrize(("height", "width", "samples", "min_stride"),
                         [(97, 131, 500, 1), (300, 40, 100, 4), (64, 64, 10**6, 1)])
def test_thinning_rows_as_they_come_equals_thinning_the_whole(height, width, samples,
                                                             min_stride):  # fmt: skip
    rng = np.random.default_rng(height)
    values = rng.normal(size=(height, width)).astype(np.float32)
    values[rng.random((height, width)) < 0.3] = np.nan  # nodata, scattered
    values[: height // 3] = np.nan  # and a whole band of rows
    streamed = _Thinned(height, width, samples, min_stride)
    cuts = np.sort(rng.choice(np.arange(1, height), size=6, replace=False))
    for a, b in zip([0, *cuts], [*cuts, height], strict=True):
        finite = np.isfinite(values[a:b])
        streamed.add(int(a), values[a:b], int(finite.sum()), finite)
    np.testing.assert_array_equal(streamed.result(), thin(values, samples, min_stride))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift-predict")
    reference = write_raster(make_scene(320, 320, seed=30)[0], folder / "june.tif")
    later = make_scene(320, 320, seed=31)[0]
    later[:, :40, :] = 0  # nodata rows at the top
    scene = write_raster(later, folder / "july.tif")
    baseline = folder / "baseline.json"
    assert main(["drift", "baseline", str(reference), "--out", str(baseline), "--model",
                 "demo", "--tile-size", "32"]) == 0  # fmt: skip
    return scene, baseline


def _history(db):
    with History(db) as history:
        return [{k: v for k, v in row.items() if k not in ("id", "scene")}
                for row in history.records()]  # fmt: skip


def test_predict_records_the_check_drift_check_records(files, tmp_path, capsys):
    scene, baseline = files
    capsys.readouterr()
    code = main(["predict", str(scene), str(tmp_path / "classes.tif"), "--precision", "fp32",
                 "--baseline", str(baseline), "--db", str(tmp_path / "during.sqlite"),
                 "--time", "2026-07-01"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and set(report["drift"]) == {"score", "threshold", "drift", "driver", "db"}
    assert main(["drift", "check", str(scene), "--baseline", str(baseline), "--db",
                 str(tmp_path / "after.sqlite"), "--time", "2026-07-01"]) == 0  # fmt: skip
    after = json.loads(capsys.readouterr().out)
    during, apart = _history(tmp_path / "during.sqlite"), _history(tmp_path / "after.sqlite")
    assert len(during) == len(apart) > 10
    assert during == apart  # every metric, value for value
    assert report["drift"]["score"] == after["score"]
    assert {r["feature"] for r in during} >= {"prediction", "ndvi", "red"}


@pytest.mark.parametrize("extra", [["--db", "h.sqlite"], ["--time", "2026-07-01"],
                                   ["--db", "h.sqlite", "--time", "2026-07-01",
                                    "--probabilities"]])  # fmt: skip
def test_incomplete_or_conflicting_drift_options_are_one_sentence(files, tmp_path, capsys,
                                                                  extra):  # fmt: skip
    scene, baseline = files
    out = tmp_path / "classes.tif"
    extra = [str(tmp_path / e) if e.endswith(".sqlite") else e for e in extra]
    code = main(["predict", str(scene), str(out), "--precision", "fp32", "--baseline",
                 str(baseline), *extra])  # fmt: skip
    assert_one_sentence_error(code, capsys.readouterr().err, "--baseline")
    assert not out.exists() and not (tmp_path / "h.sqlite").exists()
