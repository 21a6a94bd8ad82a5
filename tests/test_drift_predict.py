"""Drift gathered during predict (issue #21): ``predict --baseline --db`` records, from the
rows it streams, the very check ``drift check`` records after reading the scene again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seamline.app.cli import main
from seamline.core.data.io import valid_mask, write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.monitor.baseline import HIST_BINS
from seamline.core.monitor.fit import fit_baseline
from seamline.core.monitor.gather import RowProfile, _Thinned
from seamline.core.monitor.history import History
from seamline.core.monitor.sampling import histogram_bins, scene_parts, thin
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_bins_equal_a_binary_search(dtype):
    """Every value: random, on an edge, one float step either side of one; edges that float32
    cannot hold, repeated edges, edges beyond float32's range."""
    rng = np.random.default_rng(7)
    inner = np.sort(np.r_[rng.normal(size=14), 0.1, 0.1, 1 / 3, -1e300, 1e300])
    edges = np.r_[-np.inf, inner, np.inf]
    near = inner.astype(dtype)
    values = np.r_[rng.normal(size=10_000), near, np.nextafter(near, dtype(np.inf)),
                   np.nextafter(near, dtype(-np.inf)), 0.0, -0.0].astype(dtype)  # fmt: skip
    values = values[np.isfinite(values)].reshape(-1, 1)
    got = histogram_bins(values, edges)
    assert got.dtype == np.uint8 and got.shape == values.shape
    np.testing.assert_array_equal(got, np.searchsorted(inner, values, side="right"))


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_rows_in_any_chunks_give_drift_checks_histograms(dtype):
    """Row ranges that do not follow the drift map's cells, strips with and without nodata,
    bands by table (uint16) or by comparison (float32): every histogram and drift-map cell
    histogram equals :func:`scene_parts`' over the whole scene."""
    reference = make_scene(150, 170, seed=40)[0]
    baseline = fit_baseline(reference, tile_size=32)
    scene = make_scene(150, 170, seed=41)[0]
    scene[:, 60:70, 20:90] = 0  # nodata in some strips only
    scene = scene.astype(dtype)
    profile = RowProfile(baseline, classes=("a", "b"))
    profile.start(scene)
    raw, valid = scene.values, valid_mask(scene)
    for a, b in [(0, 13), (13, 45), (45, 64), (64, 100), (100, 101), (101, 150)]:
        profile.add(a, raw[:, a:b], valid[a:b], np.zeros((b - a, 170), np.uint8))
    edges = {f.name: f.edges for f in baseline.features}
    whole = scene_parts(scene, baseline.bands, baseline.indices, edges, 32)
    streamed = profile.parts()
    assert set(streamed) == set(whole) and "ndvi" in whole
    for name, part in whole.items():
        assert part.tiles.shape == (30, HIST_BINS)  # 5 x 6 cells
        np.testing.assert_array_equal(streamed[name].tiles, part.tiles)
        np.testing.assert_array_equal(streamed[name].counts, part.counts)
        np.testing.assert_array_equal(streamed[name].sample, part.sample)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift-predict")
    reference = write_raster(make_scene(320, 320, seed=30)[0], folder / "june.tif")
    later = make_scene(320, 320, seed=31)[0]
    later[:, :40, :] = 0  # nodata rows at the top
    scene = write_raster(later, folder / "july.tif")
    as_float = write_raster(later.astype(np.float32), folder / "july_float.tif")
    baseline = folder / "baseline.json"
    assert main(["drift", "baseline", str(reference), "--out", str(baseline), "--model",
                 "demo", "--tile-size", "32"]) == 0  # fmt: skip
    return {"uint16": scene, "float32": as_float}, baseline


def _history(db):
    with History(db) as history:
        return [{k: v for k, v in row.items() if k not in ("id", "scene")}
                for row in history.records()]  # fmt: skip


@pytest.mark.parametrize("dtype", ["uint16", "float32"])  # bands by table, or compared
def test_predict_records_the_check_drift_check_records(files, tmp_path, capsys, dtype):
    scenes, baseline = files
    scene = scenes[dtype]
    capsys.readouterr()
    code = main(["predict", str(scene), str(tmp_path / "classes.tif"), "--precision", "fp32",
                 "--baseline", str(baseline), "--db", str(tmp_path / "during.sqlite"),
                 "--time", "2026-07-01"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and set(report["drift"]) == {"score", "threshold", "drift", "driver", "db",
                                                  "gather_s"}  # fmt: skip
    assert 0 < report["drift"]["gather_s"] < report["seconds"]
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
    scenes, baseline = files
    scene = scenes["uint16"]
    out = tmp_path / "classes.tif"
    extra = [str(tmp_path / e) if e.endswith(".sqlite") else e for e in extra]
    code = main(["predict", str(scene), str(out), "--precision", "fp32", "--baseline",
                 str(baseline), *extra])  # fmt: skip
    assert_one_sentence_error(code, capsys.readouterr().err, "--baseline")
    assert not out.exists() and not (tmp_path / "h.sqlite").exists()
