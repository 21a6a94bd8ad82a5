"""Drift baselines and checks: calibrated thresholds, known changes, maps, the re-fit response."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from scipy import stats

from seamline.core.data.io import write_raster
from seamline.core.demo.data import eo_timeseries
from seamline.core.demo.series import SeriesEvents, make_series
from seamline.core.demo.synthetic import BANDS, make_scene
from seamline.core.errors import (
    BandMismatchError,
    BaselineError,
    InputFileError,
    InvalidArgumentError,
    NoDataError,
)
from seamline.core.monitor.baseline import FEATURE_METRICS, Baseline
from seamline.core.monitor.check import check
from seamline.core.monitor.fit import (
    CALIBRATION_MARGIN,
    DEFAULT_THRESHOLDS,
    MIN_THRESHOLDS,
    fit_baseline,
)
from seamline.core.monitor.refit import assess_refit, refit_normalisation
from seamline.core.predict.scene import predict_scene

SIZE = 128
TILE = 16
QUIET = SeriesEvents(recalibration_index=None, construction_start_index=None, cloudy_indices=())
SUMMER = "2024-05-01"  # every date of these series is summer: phenology does not change


def series(n: int, events: SeriesEvents = QUIET, start: str = SUMMER):
    return make_series(n, height=SIZE, width=SIZE, start=start, freq_days=4, events=events)


@pytest.fixture(scope="module")
def quiet():
    return series(10)


@pytest.fixture(scope="module")
def baseline(quiet):
    return fit_baseline([s.scene for s in quiet[:4]], tile_size=TILE)


def iid_scene(values: np.ndarray, names=("nir",)) -> xr.DataArray:
    """A georeferenced float scene of independent pixels (bands x 128 x 128)."""
    values = np.asarray(values, dtype=np.float32).reshape(len(names), 128, 128)
    da = xr.DataArray(values, dims=("band", "y", "x"), coords={"band": list(names)})
    da.rio.write_crs("EPSG:32633", inplace=True)
    da.rio.write_transform(Affine(10, 0, 500000, 0, -10, 5000000), inplace=True)
    return da.rio.write_nodata(np.nan, encoded=False)


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    reference = rng.normal(1000, 100, 16384)
    shifted = rng.normal(1050, 100, 16384)  # half a standard deviation
    base = fit_baseline(iid_scene(reference))
    result = check(iid_scene(shifted), base)
    w1 = stats.wasserstein_distance(shifted, reference) / reference.std()
    assert result.metric("nir", "wasserstein").value == pytest.approx(w1, rel=0.05)
    assert result.metric("nir", "wasserstein").value == pytest.approx(0.5, abs=0.06)
    # KS on a thinned sample (every 4th pixel each way): the full-sample statistic +- noise
    ks = stats.ks_2samp(shifted, reference).statistic
    assert result.metric("nir", "ks").value == pytest.approx(ks, abs=0.05)
    # PSI of a normal shift of d standard deviations is about d^2
    assert result.metric("nir", "psi").value == pytest.approx(0.25, rel=0.25)
    same = check(iid_scene(rng.normal(1000, 100, 16384)), base)
    assert all(same.metric("nir", m).value < result.metric("nir", m).value / 3
               for m in FEATURE_METRICS)  # fmt: skip


def test_one_scene_baseline_uses_the_documented_defaults(quiet):
    base = fit_baseline(quiet[0].scene, tile_size=TILE)
    assert base.calibration == "default" and base.scenes == 1
    assert base.indices == ("ndvi",) and base.bands == BANDS
    for name in (*BANDS, "ndvi"):
        assert base.thresholds[name] == {m: DEFAULT_THRESHOLDS[m] for m in FEATURE_METRICS}
        assert base.tiles.thresholds[name] == DEFAULT_THRESHOLDS["wasserstein"]
    result = check(quiet[5].scene, base)
    assert result.calibration == "default" and not result.drift
    assert result.metric("red", "ks").threshold == DEFAULT_THRESHOLDS["ks"]


def test_thresholds_are_calibrated_leave_one_out(quiet, baseline):
    scenes = [s.scene for s in quiet[:4]]
    assert baseline.calibration == "leave-one-out" and baseline.scenes == 4
    for metric in ("wasserstein", "ks"):  # PSI's bins come from the pooled four: not comparable
        for name in ("red", "ndvi"):
            loo = [
                check(scenes[i], fit_baseline(scenes[:i] + scenes[i + 1 :], tile_size=TILE))
                .metric(name, metric).value
                for i in range(4)
            ]  # fmt: skip
            expected = max(MIN_THRESHOLDS[metric], CALIBRATION_MARGIN * max(loo))
            assert baseline.thresholds[name][metric] == pytest.approx(expected, rel=1e-9)


def test_no_change_scenes_pass_and_each_known_change_is_flagged(quiet, baseline):
    for item in quiet[4:]:
        result = check(item.scene, baseline)
        assert not result.drift, (item.time, result.score, result.driver)
        assert 0 < result.score <= 1
    changes = {
        "gain": SeriesEvents(recalibration_index=2, recalibration_gain=1.10,
                             recalibration_offset=0.0, construction_start_index=None,
                             cloudy_indices=()),
        "construction": SeriesEvents(recalibration_index=None, construction_start_index=2,
                                     construction_rate=0.2, cloudy_indices=()),
        "clouds": SeriesEvents(recalibration_index=None, construction_start_index=None,
                               cloudy_indices=(2,), cloud_cover=0.1),
    }  # fmt: skip
    for name, events in changes.items():
        changed = series(3, events)
        assert check(changed[1].scene, baseline).drift is False, name
        result = check(changed[2].scene, baseline)
        assert result.drift and result.score > 1, name
    winter = series(1, start="2024-11-12")[0]
    assert winter.season < 0
    assert check(winter.scene, baseline).drift


def test_result_records_every_threshold_and_serialises(quiet, baseline):
    result = check(quiet[6].scene, baseline)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["threshold"] == 1.0 and data["drift"] is False
    assert set(data["metrics"]) == {*BANDS, "ndvi"}
    for name, metrics in data["metrics"].items():
        for metric, entry in metrics.items():
            assert entry["threshold"] == baseline.thresholds[name][metric]
            assert entry["drift"] == (entry["value"] > entry["threshold"])
    top = max(result.metrics, key=lambda m: m.ratio)
    assert (
        result.score == pytest.approx(top.ratio) and result.driver == f"{top.feature} {top.metric}"
    )
    rows = result.to_records()
    assert rows[0] == {"feature": "scene", "metric": "score", "value": result.score,
                       "threshold": 1.0}  # fmt: skip
    assert len(rows) == 1 + 7 * 3 + 1  # score, 7 features x 3 metrics, map drifted share


def test_construction_is_localised_on_a_georeferenced_map(quiet, baseline, tmp_path):
    events = SeriesEvents(recalibration_index=None, construction_start_index=1,
                          construction_rate=0.2, cloudy_indices=())  # fmt: skip
    before, after = series(2, events)
    result = check(after.scene, baseline)
    changed = before.labels.values != after.labels.values
    assert 0.03 < changed.mean() < 0.06  # about 5 % of the area
    cells = SIZE // TILE
    truth = changed.reshape(cells, TILE, cells, TILE).any(axis=(1, 3))
    flagged = result.drift_map.values > 1
    assert (truth & flagged).sum() / (truth | flagged).sum() >= 0.7
    assert result.drifted_tiles == pytest.approx(flagged.mean())

    path = write_raster(result.drift_map, tmp_path / "map.tif")
    with rasterio.open(path) as src:
        assert src.crs == after.scene.rio.crs
        assert src.transform == after.scene.rio.transform() @ Affine.scale(TILE)
        assert src.shape == (cells, cells)
        np.testing.assert_array_equal(src.read(1), result.drift_map.values)


def test_map_needs_the_baseline_grid_and_skips_sparse_tiles(quiet, baseline):
    result = check(quiet[5].scene.isel(x=slice(0, 96)), baseline)  # another footprint
    assert result.drift_map is None and result.drifted_tiles is None
    holed = quiet[5].scene.copy(deep=True)
    holed.values[:, : TILE * 2, :] = 0  # two rows of tiles become nodata
    result = check(holed, baseline)
    assert np.isnan(result.drift_map.values[:2]).all()
    assert np.isfinite(result.drift_map.values[2:]).all()
    # nodata is excluded, not compared as dark pixels: the same figures as the valid rows alone
    valid_rows = check(quiet[5].scene.isel(y=slice(TILE * 2, None)), baseline)
    assert [m.value for m in result.metrics] == pytest.approx([m.value for m in valid_rows.metrics])


def test_bands_are_matched_by_name(quiet, baseline):
    scene = quiet[5].scene
    reordered = scene.isel(band=[5, 4, 3, 2, 1, 0])
    a, b = check(scene, baseline), check(reordered, baseline)
    assert a.score == pytest.approx(b.score)
    with pytest.raises(BandMismatchError, match=r"lack \['swir1', 'swir2'\]"):
        check(scene.isel(band=[0, 1, 2, 3]), baseline)
    with pytest.raises(NoDataError, match="no valid pixels"):
        check(scene * 0, baseline)
    with pytest.raises(InvalidArgumentError, match="needs a model"):
        check(scene, baseline, labels=quiet[5].labels)
    with pytest.raises(BandMismatchError, match="different bands"):
        fit_baseline([scene, reordered])


def test_baseline_round_trip_and_bad_files(baseline, quiet, tmp_path):
    path = baseline.save(tmp_path / "baseline.json")
    loaded = Baseline.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.fingerprint() == baseline.fingerprint()
    assert check(quiet[7].scene, loaded).score == pytest.approx(
        check(quiet[7].scene, baseline).score
    )

    data = json.loads(path.read_text())
    bad = {
        "truncated": path.read_text()[:500],
        "not JSON": "\x00\x01binary",
        "other format": json.dumps({"format": "something-else", "version": 1}),
        "newer": json.dumps({**data, "version": 99}),
        "incomplete": json.dumps({k: v for k, v in data.items() if k != "features"}),
        "damaged": json.dumps({**data, "features": data["features"][:-1]}),
        "classes without shares": json.dumps({**data, "classes": ["water", "built-up"]}),
    }
    for case, text in bad.items():
        target = tmp_path / f"{case.replace(' ', '_')}.json"
        target.write_text(text)
        with pytest.raises(BaselineError) as info:
            Baseline.load(target)
        message = str(info.value)
        assert str(target) in message and "\n" not in message, case
    with pytest.raises(InputFileError, match="does not exist"):
        Baseline.load(tmp_path / "missing.json")


def test_refit_normalisation_undoes_a_sensor_step(baseline):
    before = make_scene(SIZE, SIZE, acquisition=7)[0]
    after = make_scene(SIZE, SIZE, acquisition=7, gain=1.10)[0]  # the same noise, +10 % gain
    matched = refit_normalisation(after, baseline)
    assert matched.dtype == after.dtype and matched.rio.crs == after.rio.crs
    # quantile matching maps the stepped values back onto the pre-step ones
    step = np.abs(after.values.astype(float) - before.values)
    error = np.abs(matched.values.astype(float) - before.values)
    assert np.median(step) > 100 and np.median(error) < np.median(step) / 10
    report = assess_refit(after, baseline)
    assert report.before.drift and not report.after.drift
    assert report.after.score < report.before.score / 10


def test_model_shares_labels_and_agreement(quiet):
    events = SeriesEvents(recalibration_index=None, construction_start_index=1,
                          construction_rate=0.4, cloudy_indices=())  # fmt: skip
    base = fit_baseline([s.scene for s in quiet[:3]], "demo", tile_size=TILE)
    assert base.classes[3] == "built-up" and sum(base.class_shares) == pytest.approx(1)
    assert base.model == "demo" and "prediction" in base.thresholds
    same = check(quiet[6].scene, base, model="demo", labels=quiet[6].labels)
    assert not same.drift and not same.metric("prediction", "js").drift
    accuracy = (same.prediction.values == quiet[6].labels.values).mean()
    assert same.metric("labels", "accuracy").value == pytest.approx(accuracy)
    assert same.metric("labels", "accuracy").threshold is None

    built = series(2, events)[1]
    result = check(built.scene, base, model="demo")
    assert result.metric("prediction", "js").drift
    assert result.class_shares["built-up"] > base.class_shares[3] + 0.05

    reference = predict_scene("demo", quiet[6].scene)
    step = make_scene(SIZE, SIZE, gain=1.10, acquisition=6)[0]
    report = assess_refit(step, base, model="demo", reference=reference)
    assert report.agreement_after >= report.agreement_before
    assert report.agreement_after > 0.99 and not report.after.drift


def test_real_series_winter_scores_above_next_summer(shared_data):
    scenes = eo_timeseries(shared_data / "eo_timeseries")
    by_date = {s.time.date().isoformat(): s for s in scenes}
    clear_2015 = [s for s in scenes if s.time.year == 2015 and s.time.month in (6, 7, 8)
                  and s.cloud_fraction < 0.01]  # fmt: skip
    assert len(clear_2015) >= 2
    base = fit_baseline([s.scene for s in clear_2015], tile_size=10)
    assert base.bands == ("ndvi",) and base.indices == () and base.calibration == "leave-one-out"
    winter = check(by_date["2016-01-17"].scene, base)
    summer = check(by_date["2016-08-14"].scene, base)
    assert by_date["2016-08-14"].cloud_fraction == 0
    assert winter.score > summer.score
    assert winter.drift and not summer.drift


@pytest.mark.parametrize(
    ("case", "tolerance"),
    [("one pixel at 1000 sd", 0.01), ("lognormal sigma 1 -> 1.3", 0.06), ("shift 0.5 sd", 0.01),
     ("scale x2", 0.02)],
)  # fmt: skip
def test_wasserstein_agrees_with_scipy(case, tolerance):
    from scipy.stats import wasserstein_distance

    from seamline.core.monitor.baseline import QUANTILE_LEVELS
    from seamline.core.monitor.distances import wasserstein_to_sketch

    rng = np.random.default_rng(0)
    n = 160_000
    base, scene = {
        "one pixel at 1000 sd": (rng.normal(size=n), np.r_[1000.0, rng.normal(size=n - 1)]),
        "lognormal sigma 1 -> 1.3": (rng.lognormal(0, 1, n), rng.lognormal(0, 1.3, n)),
        "shift 0.5 sd": (rng.normal(size=n), rng.normal(0.5, 1, n)),
        "scale x2": (rng.normal(size=n), rng.normal(0, 2, n)),
    }[case]
    ours = wasserstein_to_sketch(scene, np.quantile(base, QUANTILE_LEVELS))
    assert abs(ours - wasserstein_distance(scene, base)) < tolerance


def _samples(case: str, n: int = 160_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "one pixel at 1000 sd": (rng.normal(size=n), np.r_[1000.0, rng.normal(size=n - 1)]),
        "lognormal sigma 1 -> 1.3": (rng.lognormal(0, 1, n), rng.lognormal(0, 1.3, n)),
        "student t df 3, scale x1.5": (rng.standard_t(3, n), 1.5 * rng.standard_t(3, n)),
        "student t df 1.5, unchanged": (rng.standard_t(1.5, n), rng.standard_t(1.5, n)),
        "pareto 2.5 -> 2": (rng.pareto(2.5, n), rng.pareto(2.0, n)),
        "poisson 3 -> 3.5 (ties)": (rng.poisson(3, n) * 1.0, rng.poisson(3.5, n) * 1.0),
        "shift 0.5 sd": (rng.normal(size=n), rng.normal(0.5, 1, n)),
    }[case]


CASES = ["one pixel at 1000 sd", "lognormal sigma 1 -> 1.3", "student t df 3, scale x1.5",
         "student t df 1.5, unchanged", "pareto 2.5 -> 2", "poisson 3 -> 3.5 (ties)",
         "shift 0.5 sd"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_drift_metric_agrees_with_scipy_on_outliers_and_heavy_tails(case):
    """Each metric against scipy on the same data: KS against ``ks_2samp``, W1 against
    ``wasserstein_distance``, PSI against scipy's symmetric KL (PSI is KL(p|q) + KL(q|p)) and
    JS against ``jensenshannon`` squared, over the baseline's fixed-edge bins."""
    from scipy.spatial.distance import jensenshannon

    from seamline.core.monitor.baseline import QUANTILE_LEVELS
    from seamline.core.monitor.distances import _ks, _psi, jensen_shannon, wasserstein_to_sketch

    base, scene = _samples(case)
    sketch = np.quantile(base, QUANTILE_LEVELS)
    # KS at the sketch's 101 knots: within its 1 % resolution of the full two-sample statistic
    assert abs(_ks(scene, sketch) - stats.ks_2samp(scene, base).statistic) < 0.01
    # W1 from the sketch leaves out the outer 0.5 % each side (one pixel at 1000 sd is not
    # drift); with an infinite variance (t, df 1.5) scipy's own value is a few pixels' noise.
    w1 = stats.wasserstein_distance(scene, base)
    assert abs(wasserstein_to_sketch(scene, sketch) - w1) < max(0.05 * w1, 0.05)
    edges = np.unique(np.quantile(base, np.linspace(0, 1, 21)))  # mass of both in every bin
    edges[0], edges[-1] = -np.inf, np.inf
    p, q = (np.histogram(x, edges)[0] / x.size for x in (scene, base))
    assert (p > 0).all() and (q > 0).all()
    assert _psi(p, q) == pytest.approx(stats.entropy(p, q) + stats.entropy(q, p), rel=1e-9)
    assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)


def test_the_drift_pipeline_on_a_heavy_tail_agrees_with_scipy():
    """Through fit_baseline and check (their sampling, sketches and scale), not only the
    distance functions: a lognormal band whose sigma grows from 1 to 1.3."""
    rng = np.random.default_rng(5)
    reference, changed = rng.lognormal(7, 1, 16384), rng.lognormal(7, 1.3, 16384)
    baseline = fit_baseline(iid_scene(reference))
    result = check(iid_scene(changed), baseline)
    scale = baseline.feature("nir").scale
    w1 = stats.wasserstein_distance(changed, reference) / scale
    assert result.metric("nir", "wasserstein").value == pytest.approx(w1, rel=0.1)
    ks = stats.ks_2samp(changed, reference).statistic
    assert result.metric("nir", "ks").value == pytest.approx(ks, abs=0.05)
