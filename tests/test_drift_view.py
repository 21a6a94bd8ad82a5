"""DriftSeries / DriftView: state -> data and view objects, without a browser or server."""

import asyncio
import os

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.model import Model

from seamline.components.drift_view import DriftSeries, DriftView, refit_table, score_plot
from seamline.core.demo.synthetic import CLASSES
from tests.conftest import write_tif

N_DATES = 9  # default SeriesEvents: clouds at 2, construction from 4, recalibration at 8
BASELINE = 3


@pytest.fixture(scope="module")
def computed() -> DriftSeries:
    """One synthetic run with the demo model, shared by the tests that only read it."""
    state = DriftSeries(n_dates=N_DATES, size=64, baseline_count=BASELINE, model="demo")
    assert state.compute(), state.message
    return state


def test_one_row_per_date_baseline_quiet_and_changes_flagged(computed):
    results = computed.results
    assert len(results) == N_DATES and results["time"].is_monotonic_increasing
    events = results["events"].to_numpy()
    cloudy = int(np.flatnonzero(events == "clouds")[0])
    # the baseline is the first clear dates: the cloudy date is skipped, not fitted on
    baseline = np.flatnonzero(results["baseline"].to_numpy())
    assert len(baseline) == BASELINE and cloudy not in baseline
    assert not results["drift"].iloc[baseline].any()
    assert (results["score"].iloc[baseline] < 1).all()
    first_change = int(np.flatnonzero(events != "")[0])
    assert first_change == cloudy and results["drift"].iat[cloudy]
    built = int(np.flatnonzero(events == "construction")[0])
    assert results["drift"].iat[built]
    assert (results["threshold"] == 1.0).all()
    assert {"ndvi_wasserstein", "red_psi", "prediction_js"} <= set(results.columns)


def test_class_shares_and_maps_per_date(computed):
    shares = computed.class_shares
    assert list(shares.columns) == list(CLASSES)
    assert list(shares.index) == list(computed.results["time"])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-6)
    assert len(computed.maps) == N_DATES
    scene = computed.scenes[0].scene
    for drift_map in computed.maps:
        assert drift_map.rio.crs == scene.rio.crs and drift_map.shape == (4, 4)  # 64 px / 16
    cloudy = computed.results["events"].tolist().index("clouds")
    assert np.nanmax(computed.maps[cloudy].values) > 1 > np.nanmax(computed.maps[0].values)


def test_refit_runs_on_the_largest_step_the_recalibration(computed):
    # Chosen from the measurements (a step in score on a clear date), not the event's name.
    refit, results = computed.refit, computed.results
    step = results["events"].tolist().index("recalibration")
    assert refit["index"] == step and refit["reason"] == "largest step in score"
    assert refit["time"] == results["time"].iat[step]
    assert refit["reference_time"] == results["time"].iat[step - 1]
    assert refit["score_before"] == pytest.approx(results["score"].iat[step])
    assert refit["drift_before"] and refit["score_after"] != refit["score_before"]
    assert 0 <= refit["agreement_before"] <= 1 and 0 <= refit["agreement_after"] <= 1
    table = refit_table(refit)
    assert list(table.columns) == ["before", "after"] and len(table) == 3


def test_score_plot_has_threshold_and_one_alert_marker_per_flagged_date(computed):
    overlay = DriftView(state=computed).score_overlay()
    lines = [el for el in overlay if isinstance(el, hv.HLine)]
    assert len(lines) == 1 and lines[0].data == 1.0
    scatters = {el.label: el for el in overlay if isinstance(el, hv.Scatter)}
    assert len(scatters["drift"]) == int(computed.results["drift"].sum()) > 0
    assert len(scatters["baseline"]) == BASELINE
    assert sum(len(s) for s in scatters.values()) == N_DATES  # one marker per date
    # a zero score still lands on the log axis
    zeroed = computed.results.assign(score=0.0, drift=False)
    drawn = [el for el in score_plot(zeroed) if not isinstance(el, hv.HLine) and len(el)]
    assert min(el.dimension_values("score").min() for el in drawn) > 0


def test_date_index_drives_scene_map_text_and_slider(computed):
    view = DriftView(state=computed)
    computed.date_index = 0
    scene0, map0, text0 = view.scene_element(), view.map_element(), view.date_text()
    cloudy = computed.results["events"].tolist().index("clouds")
    view._slider.value = cloudy  # the widget moves the state
    assert computed.date_index == cloudy
    scene2, map2, text2 = view.scene_element(), view.map_element(), view.date_text()
    day0, day2 = (f"{t:%Y-%m-%d}" for t in computed.results["time"].iloc[[0, cloudy]])
    assert day0 in scene0.label and day2 in scene2.label and day2 in map2.label
    assert not np.array_equal(scene0.data, scene2.data)
    assert not np.array_equal(map0.dimension_values("drift"), map2.dimension_values("drift"))
    assert day0 in text0 and "clouds" in text2 and "drift" in text2
    computed.date_index = 1  # and the state moves the widget
    assert view._slider.value == 1


def test_panel_renders_a_bokeh_model_before_and_after_compute(computed):
    assert isinstance(pn.panel(DriftView(state=DriftSeries())).get_root(), Model)
    assert isinstance(pn.panel(DriftView(state=computed)).get_root(), Model)


def test_run_button_computes_off_the_event_loop():
    state = DriftSeries(n_dates=4, size=64, baseline_count=2, with_model=False)
    view = DriftView(state=state)
    seen = []
    state.param.watch(lambda e: seen.append(e.new), "done")
    asyncio.run(view._run())
    assert not state.running and state.message == ""
    assert len(state.results) == 4 and state.class_shares is None
    assert seen[-1] == state.total == 4 + 2  # fit, four dates, re-fit
    # the re-fit goes to the clear date that drifted, never the cloudy one (re-fitting the
    # normalisation cannot answer clouds), though the cloudy date scores far higher
    assert state.refit["reason"] == "largest step in score" and state.refit["index"] == 3
    assert state.results["score"].iat[2] > state.results["score"].iat[3]
    assert state.refit["agreement_before"] is None  # no model, no agreement


@pytest.mark.parametrize("case", ["missing", "empty", "bands", "blank"])
def test_bad_folder_sets_one_sentence_message(tmp_path, case):
    folder = tmp_path / "scenes"
    if case != "missing":
        folder.mkdir()
    if case == "bands":
        data = np.full((3, 40, 40), 500, dtype=np.uint16)
        write_tif(folder / "2024-01-01.tif", data, descriptions=("red", "green", "blue"))
        write_tif(folder / "2024-02-01.tif", data, descriptions=("nir", "green", "blue"))
    state = DriftSeries(
        source="folder", folder="" if case == "blank" else str(folder), data_roots=[tmp_path]
    )
    assert state.compute() is False
    assert state.message.count(".") >= 1 and "\n" not in state.message
    expected = {"missing": "does not exist", "empty": "no GeoTIFF", "bands": "bands",
                "blank": "No folder"}  # fmt: skip
    assert expected[case] in state.message
    assert state.results is None and not state.running


def test_folder_dates_from_file_names_and_too_few_clear_dates(tmp_path):
    rng = np.random.default_rng(0)
    names = ["site_2024-03-01.tif", "site_20240115.tif", "2024-02-01.tif", "undated.tif"]
    for i, name in enumerate(names):
        data = rng.integers(100, 3000, size=(3, 48, 48), dtype=np.uint16) + 100 * i
        write_tif(tmp_path / name, data, descriptions=("red", "green", "blue"))
    os.utime(tmp_path / "undated.tif", (2e9, 2e9))  # mtime 2033: the last date
    state = DriftSeries(
        source="folder", folder=str(tmp_path), data_roots=[tmp_path], baseline_count=2, tile_size=16
    )
    assert state.with_model is False  # no model by default for a folder of unknown bands
    assert state.compute(), state.message
    days = [f"{t:%Y-%m-%d}" for t in state.results["time"]]
    assert days[:3] == ["2024-01-15", "2024-02-01", "2024-03-01"] and days[3] > "2030"
    assert state.results["baseline"].tolist() == [True, True, False, False]
    state.baseline_count = 5
    assert state.compute() is False and "baseline count" in state.message
    assert len(state.results) == 4  # the previous results stay


def test_folder_outside_the_data_roots_is_refused_and_the_series_kept(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    rng = np.random.default_rng(1)
    for folder in (root / "site", outside):
        folder.mkdir(parents=True)
        for day in ("2024-01-01", "2024-02-01", "2024-03-01"):
            data = rng.integers(100, 3000, size=(3, 32, 32), dtype=np.uint16)
            write_tif(folder / f"{day}.tif", data, descriptions=("red", "green", "blue"))
    state = DriftSeries(source="folder", folder="site", data_roots=[root], baseline_count=2)
    assert state.compute(), state.message
    results, scenes = state.results, state.scenes
    (root / "site" / "2024-04-01.tif").symlink_to(outside / "2024-01-01.tif")
    (root / "link").symlink_to(outside, target_is_directory=True)
    attempts = ["../outside", str(outside), "link", "site", "/"]  # site: holds an escaping link
    for folder in attempts:
        state.folder = folder
        assert state.compute() is False
        assert "outside the data roots" in state.message and "\n" not in state.message
        assert state.results is results and state.scenes is scenes  # the previous series stays
    view = pn.panel(DriftView(state=state))
    assert "outside the data roots" in str(view.select(pn.pane.Alert)[0].object)
    assert DriftSeries(source="folder", folder=str(root / "site")).compute() is False  # no roots


def test_eo_source_offered_only_when_present(tmp_path):
    assert "eo_timeseries" not in DriftSeries(eo_folder=str(tmp_path / "none")).param.source.objects
    state = DriftSeries(eo_folder=str(tmp_path), model="demo")
    assert "eo_timeseries" in state.param.source.objects
    state.source = "eo_timeseries"
    assert state.with_model is False
    state.source = "synthetic"
    assert state.with_model is True


def test_eo_timeseries_winter_scores_above_clear_summer(shared_data):
    folder = shared_data / "eo_timeseries"
    if not folder.is_dir():
        pytest.skip(f"eo_timeseries not found at {folder}")
    state = DriftSeries(eo_folder=str(folder), source="eo_timeseries")
    assert state.compute(), state.message
    results = state.results
    clear = results["events"] == ""  # cloudy dates carry a "clouds N %" event
    month, year = results["time"].dt.month, results["time"].dt.year
    winter = results["score"][clear & month.isin([12, 1])]
    summer = results["score"][clear & (year > 2015) & month.isin([6, 7, 8])]
    assert len(winter) and len(summer)
    assert winter.min() > summer.max()
    assert results["drift"][clear & month.isin([12, 1])].all()
    state.date_index = int(winter.index[0])
    image = DriftView(state=state).scene_element()
    assert isinstance(image, hv.Image) and image.vdims[0].name == "ndvi"


def test_an_unexpected_error_is_one_sentence_and_run_works_again(monkeypatch):
    import seamline.components.drift_view as drift_view

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(drift_view, "monitor_series", broken)
    state = DriftSeries(n_dates=4, size=64, baseline_count=2, with_model=False)
    asyncio.run(DriftView(state=state)._run())
    assert not state.running  # the Run button is usable again
    assert state.message.startswith("Something went wrong (RuntimeError: disk on fire)")
    assert "\n" not in state.message
