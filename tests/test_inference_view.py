"""Dashboard inference and scene-picker state -> view logic, without a browser."""

from __future__ import annotations

import asyncio

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest

from seamline.components.inference_state import KEPT_COLUMNS, InferenceState, readable_runs
from seamline.components.inference_view import InferenceView, grid_outline, legend
from seamline.components.scene_picker import ScenePicker
from seamline.core.demo.synthetic import make_scene
from seamline.core.demo.train import demo_calibration
from seamline.core.errors import SeamlineError
from seamline.core.serve.cache import ModelCache
from seamline.core.serve.runs import ON_CALIBRATION_TILES, RunSettings, run_inference
from seamline.core.serve.seams import away_from_edge, seam_report
from tests.conftest import write_tif


@pytest.fixture(scope="module")
def cache():
    return ModelCache(calibration=demo_calibration)


@pytest.fixture
def state(cache):
    """The page at FP32 (its default is auto, tested on its own below)."""
    return InferenceState(cache, model="demo", scene=make_scene(192, 160, seed=7)[0], tile_size=128,
                          precision="fp32")  # fmt: skip


def test_run_shows_figures_and_caches_per_parameter_set(state):
    first = state.run()
    assert state.result is first and first.classes.shape == (192, 160)
    assert first.tiles == len(state.grid()) and first.megapixels_per_s > 0
    assert first.tile_ms_p95 >= first.tile_ms_p50 > 0 and first.agreement_fp32 is None
    assert 0 < first.forward_s < first.seconds  # the model's calls, within the run
    assert state.run() is first and len(state.runs) == 1  # same choices: cached, one row
    state.overlap = 48
    second = state.run()
    assert second is not first and list(state.runs["run"]) == [
        first.settings.label(),
        second.settings.label(),
    ]


def test_int8_run_reports_agreement_and_a_smaller_model(state):
    fp32 = state.run()
    state.precision = "int8"
    int8 = state.run()
    assert int8.settings.precision == "int8" and int8.size_mb < 0.35 * fp32.size_mb
    assert int8.agreement_fp32 >= 0.98
    expected = (int8.classes.values == fp32.classes.values).mean()
    assert int8.agreement_fp32 == pytest.approx(expected)
    state.overlap = 48  # a new tiling at int8 reuses the cached fp32 run as the reference
    state.run()
    assert sorted(r.precision for _, r in state._results) == ["fp32", "int8", "int8"]


def test_bad_choice_becomes_a_message_not_an_exception(state):
    state.overlap = 200  # >= tile size 128
    assert state.run() is None and "overlap must be" in state.message
    assert state.result is None


def test_new_scene_clears_results(state):
    state.run()
    state.scene = make_scene(64, 64, seed=8)[0]
    assert state.result is None and state.runs.empty


def _class_map(view: InferenceView) -> tuple[pn.Column, hv.Overlay]:
    """The class-map section and its overlay as the page would show it now."""
    section = view.class_map()
    plot = section.select(pn.pane.HoloViews)[0].object
    return section, plot[()]  # evaluate the DynamicMaps


def test_view_follows_state(state):
    view = InferenceView(state=state)
    section, _ = _class_map(view)
    prompt, title, shown = section
    assert prompt.visible and not shown.visible  # nothing run yet: the prompt
    state.run()
    state.show_grid = True
    _, (image, rects, path) = _class_map(view)
    assert prompt.visible is False and shown.visible is True
    assert state.result.settings.label() in title.object
    assert isinstance(image, hv.Image) and set(np.unique(image.data["class"])) <= {0, 1, 2, 3, 4}
    assert isinstance(rects, hv.Rectangles) and len(rects) == len(state.grid())
    assert len(path) == 0  # polygons off
    state.tile_size = 256  # a choice not run yet: the overlay keeps showing the run's tiles
    assert len(_class_map(view)[1].get(1)) == len(state.grid(state.result.settings))
    assert len(state.grid(state.result.settings)) != len(state.grid())
    state.show_grid = False
    assert len(_class_map(view)[1].get(1)) == 0
    shown_figures = " ".join(pane.object for pane in view.figures())
    assert "Tile p50" in shown_figures and f"{state.result.seconds:.2f} s" in shown_figures
    assert len(view.runs_view()[0].value) == 1
    assert pn.panel(view).get_root() is not None


def test_map_updates_in_place_and_reframes_for_a_new_scene(state):
    """Runs on one scene change the data of the same plot (the figure is not rebuilt); a new
    scene gets a new figure framed to it at 1:1 (the blank-map defect kept the old one)."""
    section = pn.panel(InferenceView(state=state)._class_map_pane)
    section.get_root()

    def shown() -> pn.pane.HoloViews:
        return section.select(pn.pane.HoloViews)[0]

    state.run()
    plot = shown().object
    first = plot[()].get(0).data["class"].values.copy()
    state.overlap = 48
    state.run()
    assert shown().object is plot  # the same DynamicMaps, fed the new run
    state.scene = make_scene(128, 96, seed=5)[0]
    state.run()
    assert shown().object is not plot
    image = shown().object[()].get(0)
    assert image.data["class"].shape != first.shape  # the new scene's map
    left, bottom, right, top = state.scene.rio.bounds()
    assert image.bounds.lbrt() == pytest.approx((left, bottom, right, top), abs=20)
    figure = hv.render(shown().object)
    assert figure.frame_width / figure.frame_height == pytest.approx(96 / 128, rel=0.01)


def test_async_run_and_the_seams_side_by_side(state):
    view = InferenceView(state=state)
    asyncio.run(view._run())
    assert state.result is not None and not state.running
    assert state.done_tiles == state.total_tiles == len(state.grid())
    asyncio.run(view._seams())
    maps, words = view._seam_plots
    assert words.object.startswith("Tiles without overlap give") and "%" in words.object
    naive, chosen = (hv.render(pane.object) for pane in maps)
    assert naive.title.text == "Tiles without overlap"
    assert chosen.title.text == f"Your tiling (cosine, {state.overlap} px)"
    assert naive.x_range.start < naive.x_range.end and naive.x_range.end == chosen.x_range.end


def test_seam_report_sets_no_overlap_against_the_chosen_tiling(cache):
    scene = make_scene(256, 200, seed=3)[0]
    report = seam_report(scene, RunSettings(tile_size=128, overlap=64, blend="cosine"), cache,
                         model="demo")  # fmt: skip
    for classes in (report.naive, report.chosen):  # on the scene's grid, not transposed
        assert classes.dims == ("y", "x") and classes.shape == (256, 200)
        assert classes.rio.transform() == scene.rio.transform()
    assert report.chosen_max_difference < 1e-3  # overlap 64 covers the receptive field
    assert report.naive_max_difference > 100 * report.chosen_max_difference  # seams without
    assert report.naive_changed >= report.chosen_changed
    x0, x1, y0, y1 = report.window  # around the inner tile corner at pixel (128, 128)
    corner_x, corner_y = scene.rio.transform() * (128, 128)
    assert x0 < corner_x < x1 and y0 < corner_y < y1
    left, bottom, right, top = scene.rio.bounds()
    assert left <= x0 and x1 <= right and bottom <= y0 and y1 <= top
    crop = seam_report(scene, RunSettings(tile_size=128, overlap=64, blend="crop"), cache,
                       model="demo")  # fmt: skip
    assert crop.chosen_max_difference < 1e-4 and crop.chosen_changed == 0.0
    assert "another class" in crop.sentence() and "crop over 64 px" in crop.sentence()


def test_grid_outline_and_legend(state):
    grid = state.grid()
    rects = grid_outline(grid, state.scene)
    left, bottom, right, top = state.scene.rio.bounds()
    data = rects.array()
    assert np.isclose(data[:, 0].min(), left) and np.isclose(data[:, 2].max(), right)
    assert np.isclose(data[:, 1].min(), bottom) and np.isclose(data[:, 3].max(), top)
    html = legend(["water", "built-up"], ["#1f77b4", "#d62728"])
    assert html.count("background:") == 2 and "built-up" in html


def test_run_inference_rejects_unknown_device(cache):
    with pytest.raises(ValueError, match="Unknown device"):
        run_inference(make_scene(64, 64)[0], RunSettings(device="gpu7"), cache, model="demo")


def test_scene_picker_sources_and_bad_uploads(tmp_path):
    picker = ScenePicker()
    assert picker.scene.rio.crs.to_epsg() == 32719 and picker.aoi is not None
    picker.param.update(source="Synthetic", synthetic_size=256, seed=3)
    assert picker.scene.shape == (6, 256, 256) and picker.aoi is None
    assert "256 x 256" in picker.title
    before = picker.scene
    assert not picker.use_upload(b"not a tiff", "junk.tif")
    assert picker.message and "Traceback" not in picker.message and picker.scene is before
    good = write_tif(tmp_path / "up.tif", np.ones((3, 40, 50), dtype=np.uint16))
    assert not picker.use_upload(good.read_bytes(), "up.tif", b"{oops", "aoi.geojson")
    assert "aoi.geojson" in picker.message
    no_crs = write_tif(tmp_path / "no_crs.tif", np.ones((3, 40, 50), dtype=np.uint16), crs=None)
    assert not picker.use_upload(no_crs.read_bytes(), "no_crs.tif")  # nothing could place it
    assert "no CRS" in picker.message and "no_crs.tif" in picker.message
    assert picker.use_upload(good.read_bytes(), "up.tif")
    assert picker.scene.shape == (3, 40, 50) and picker.message == "" and picker.source == "Upload"
    assert pn.panel(picker).get_root() is not None


def test_class_polygons_overlay_and_geopackage_download(state, tmp_path):
    import geopandas as gpd
    from scipy import ndimage

    from seamline.components.inference_view import polygon_outline

    with pytest.raises(SeamlineError, match="Run inference first"):
        state.polygons()
    result = state.run()
    polygons = state.polygons()
    classes = result.classes.values
    expected = sum(ndimage.label(classes == c)[1] for c in np.unique(classes))
    assert len(polygons) == expected  # one polygon per connected component (4-connectivity)
    assert state.polygons() is polygons  # computed once per run
    path = tmp_path / "classes.gpkg"
    path.write_bytes(asyncio.run(state.geopackage_file()).getvalue())  # the button's callback
    back = gpd.read_file(path)
    assert len(back) == expected and back.crs == result.classes.rio.crs
    outline = polygon_outline(polygons)
    rings = sum(1 + len(g.interiors) for g in polygons.geometry)
    assert np.isnan(outline.array()[:, 0]).sum() == rings - 1  # one NaN between rings
    view = InferenceView(state=state)
    assert state.outlines is None  # polygonized only while shown (in a worker thread)
    state.show_polygons = True
    assert state.outlines is polygons
    path = _class_map(view)[1].get(2)
    assert isinstance(path, hv.Path) and len(path) == 1  # one NaN-separated path
    state.show_polygons = False
    assert state.outlines is None and len(_class_map(view)[1].get(2)) == 0


def test_a_second_run_while_one_is_in_flight_does_nothing(state):
    assert state.begin() and state.running
    assert state.run() is None and state.result is None  # the double click
    state.finish()
    assert not state.running and state.run() is not None


def test_cancel_stops_a_run_between_batches_and_keeps_the_page_usable(state):
    done = []

    def cancel_after_first_batch(event) -> None:
        done.append(event.new)
        if len(done) == 1:
            state.cancel()

    state.param.watch(cancel_after_first_batch, "done_tiles")
    state.param.update(tile_size=128, overlap=0)
    assert state.run() is None
    assert state.message.startswith("Run cancelled") and not state.running
    assert len(done) == 1 and state.result is None
    assert len(state.grid()) > 1  # it stopped with tiles left
    assert state.run() is not None  # and the next run is a whole one


def test_cancel_ends_a_run_at_once_while_auto_measures_and_the_measurement_is_kept(
    monkeypatch,
):
    """Cancel waited for auto's measurement (up to a minute) before the run stopped."""
    import threading

    import seamline.core.serve.cache as cache_module

    started, release, calls = threading.Event(), threading.Event(), []

    def slow_auto(model, scene, **_):  # auto's measurement, held until released
        calls.append(model.name)
        started.set()
        assert release.wait(60)
        return model, None

    monkeypatch.setattr(cache_module, "auto_backend", slow_auto)
    state = InferenceState(ModelCache(calibration=demo_calibration), model="demo",
                           scene=make_scene(160, 160, seed=8)[0], tile_size=128)  # fmt: skip
    runs = []
    run = threading.Thread(target=lambda: runs.append(state.run()))
    run.start()
    assert started.wait(60)
    state.cancel()
    run.join(timeout=30)  # without the fix it waits for `release`, which comes only after
    try:
        assert not run.is_alive() and runs == [None]
        assert state.message.startswith("Run cancelled") and not state.running
    finally:
        release.set()
    assert state.run() is not None  # the measurement ended in the cache: not run again
    assert calls == ["demo"]


def test_int8_phases_waited_time_and_the_reference_apart(state):
    phases = []
    state.param.watch(lambda e: phases.append(e.new), "phase")
    state.precision = "int8"
    result = state.run()
    assert [p for p in phases if p] == ["FP32 reference 1/2", "INT8 2/2"]
    assert state.reference_seconds > 0 and state.waited > result.seconds + state.reference_seconds
    assert state.phase == ""
    phases.clear()
    state.overlap = 48  # an FP32 run of the scene is cached now: one step
    state.run()
    assert [p for p in phases if p] == ["INT8 1/1"] and state.reference_seconds is None


def test_the_class_map_is_marked_stale_when_a_control_changes(state):
    view = InferenceView(state=state)
    section = view.class_map()
    title = section.objects[1]
    state.run()
    assert "Predicted classes" in title.object and "controls changed" not in title.object
    state.blend = "crop"
    assert "controls changed" in title.object
    state.blend = "cosine"
    assert "controls changed" not in title.object


def test_the_runs_table_reads_as_a_person_would():
    runs = pd.DataFrame([{"run": "int8 t256 o32 cosine b1", "backend": "int8", "seconds": 1.23456,
                          "tile_ms_p50": 12.345, "tile_ms_p95": 20.0, "megapixels_per_s": 3.3333,
                          "size_mb": 0.1234, "agreement_fp32": 0.99721,
                          "agreement_on": "scene"}])  # fmt: skip
    shown = readable_runs(runs)
    assert list(shown.columns) == ["Run", "Backend", "Prediction (s)", "Tile p50 (ms)",
                                   "Tile p95 (ms)", "Mpx/s", "Model (MB)",
                                   "Agreement with FP32 (%)"]  # fmt: skip
    assert shown.iloc[0].tolist()[2:] == ["1.23", "12.3", "20.0", "3.33", "0.12", "99.72"]
    runs.loc[0, "agreement_on"] = ON_CALIBRATION_TILES  # auto's, with no FP32 run of the scene
    assert readable_runs(runs).iloc[0, -1] == "99.72 (calibration tiles)"
    runs.loc[0, ["agreement_fp32", "agreement_on"]] = None, ""  # an FP32 run has no agreement
    assert readable_runs(runs).iloc[0, -1] == "-"
    empty = readable_runs(pd.DataFrame(columns=KEPT_COLUMNS))  # the page before a run
    assert empty.empty and list(empty.columns) == list(shown.columns)


def test_an_uploaded_aoi_is_applied_and_uploads_decode_off_the_event_loop(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    picker = ScenePicker()
    good = write_tif(tmp_path / "up.tif", np.full((3, 40, 50), 7, dtype=np.uint16))
    # the AOI in EPSG:4326, as users have it: reprojected, cropped, masked outside
    aoi = gpd.GeoDataFrame(geometry=[box(500100, 4999700, 500300, 4999900)], crs="EPSG:32633")
    aoi_bytes = aoi.to_crs("EPSG:4326").to_json().encode()
    picker._raster_input.param.update(value=good.read_bytes(), filename="up.tif")
    picker._aoi_input.param.update(value=aoi_bytes, filename="field.geojson")
    asyncio.run(picker._use_dropped())
    assert picker.message == "" and picker.aoi is not None
    assert picker.scene.sizes["x"] < 50 and picker.scene.sizes["y"] < 40  # cropped to it
    values = picker.scene.values
    assert (values == 7).any() and (values == picker.scene.rio.nodata).any()  # masked outside
    far = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32633").to_json().encode()
    assert not picker.use_upload(good.read_bytes(), "up.tif", far, "far.geojson")
    assert "\n" not in picker.message and picker.scene is not None


def test_an_unexpected_error_in_a_run_is_one_sentence(state, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("tile")

    monkeypatch.setattr(state, "compute", broken)
    asyncio.run(InferenceView(state=state)._run())
    assert not state.running and state.message.startswith("Something went wrong (KeyError")
    assert state.result is None


def test_each_model_starts_at_the_overlap_that_covers_its_field(cache, tmp_path):
    from tests.conftest import foreign_model

    state = InferenceState(cache, model="demo", scene=make_scene(192, 160, seed=7)[0])
    assert state.tile_size == 256 and state.overlap == 92 and state.seams == ""  # 4 x 23 px
    state.overlap = 16
    assert "does not cover model 'demo'" in state.seams and "needs 92 px" in state.seams
    state.model = str(foreign_model(tmp_path))  # receptive radius 3 px
    assert state.overlap == 12 and state.seams == ""
    state.overlap = 4  # the person's choice stays when the tiling changes
    state.tile_size = 128
    assert state.overlap == 4 and "needs 12 px" in state.seams
    state.model = "demo"  # a new model starts at its own covering overlap again
    assert state.overlap == 64 and "tile size of at least 184" in state.seams


def test_auto_runs_the_measured_backend_and_the_page_says_which(state, monkeypatch):
    import seamline.core.optimise.auto as auto

    eager = [auto.BACKENDS["fp32"], auto.BACKENDS["int8"]]
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": eager)
    state.cache = ModelCache(calibration=demo_calibration)  # no auto choice built yet
    fp32 = state.run()
    assert fp32.backend == "fp32"
    state.precision = "auto"
    picked = state.run()
    choice = auto.cached_choice(state.cache.get("demo"), tile_size=128, backends=eager)
    assert choice is not None and picked.backend == choice.backend  # measured, then cached
    assert picked.agreement_fp32 is not None and picked.agreement_fp32 >= 0.98
    assert list(state.runs["backend"]) == ["fp32", choice.backend]
    assert readable_runs(state.runs)["Backend"].tolist() == ["fp32", choice.backend]


def test_the_page_defaults_to_auto_and_waits_for_no_fp32_run(cache):
    """Precision auto is the page's default (#20): its run is the fastest backend that
    agrees with FP32 and runs alone; the agreement shown is the one auto measured on its
    calibration tiles until an FP32 run of the scene exists, then the scene's."""
    state = InferenceState(cache, model="demo", scene=make_scene(192, 160, seed=7)[0],
                           tile_size=128)  # fmt: skip
    phases = []
    state.param.watch(lambda e: phases.append(e.new), "phase")
    assert state.precision == "auto"
    picked = state.run()
    assert len(state._results) == 1 and state.reference_seconds is None  # no FP32 run
    shown_phases = [p for p in phases if p]  # measuring, unless another test measured first
    assert shown_phases[0] == "AUTO 1/1"
    assert all(p.startswith("Auto: measuring ") for p in shown_phases[1:])
    _, choice = cache.auto("demo", tile_size=128)
    assert picked.backend == choice.backend and picked.choice == choice
    assert picked.agreement_on == ON_CALIBRATION_TILES
    assert picked.agreement_fp32 == next(m.agreement for m in choice.measurements
                                         if m.backend == choice.backend) >= 0.995  # fmt: skip
    view = InferenceView(state=state)
    shown = " ".join(str(pane.object) for pane in view.figures())
    assert "on calibration tiles" in shown and f"picked {choice.reason}" in shown
    for row in choice.table():  # the table auto picked from, its pick in bold
        name = f"**{row['backend']}**" if row["chosen"] else row["backend"]
        assert f"| {name} | {row['ms_per_tile']:.1f} |" in shown
    state.precision = "fp32"
    fp32 = state.run()
    state.param.update(precision="auto", overlap=48)  # an FP32 run of the scene exists now
    again = state.run()
    assert again.agreement_on == "scene" and again.choice == choice
    same = again.classes.values == fp32.classes.values
    assert again.agreement_fp32 == pytest.approx(same.mean())


def test_an_auto_run_that_picked_fp32_is_the_reference_of_the_others(cache, monkeypatch):
    import seamline.core.optimise.auto as auto

    monkeypatch.setattr(auto, "candidates", lambda device="cpu": [auto.BACKENDS["fp32"]])
    state = InferenceState(ModelCache(calibration=demo_calibration), model="demo",
                           scene=make_scene(192, 160, seed=7)[0], tile_size=128)  # fmt: skip
    picked = state.run()
    assert picked.backend == "fp32" and picked.agreement_fp32 == 1.0
    state.precision = "int8"
    state.run()
    assert len(state._results) == 2 and state.reference_seconds is None  # no FP32 run added


def test_the_seams_are_judged_away_from_the_scene_edge(cache):
    """A scene lower than a tile is padded to it by reflection, and its edge then differed
    from the untiled run by ~0.17 with or without overlap (the 300 x 200 demo scene at the
    dashboard's 256 px tiles), hiding the seams: judged farther than the receptive radius
    from the edge, tiles without overlap show their seam and the overlap removes it."""
    scene = make_scene(200, 600, seed=3)[0]  # one tile row; tiles abut at column 256
    report = seam_report(scene, RunSettings(tile_size=256, overlap=92, blend="cosine"), cache,
                         model="demo")  # fmt: skip
    assert report.chosen_max_difference < 1e-3  # 92 px covers the 23 px radius
    assert report.naive_max_difference > 100 * report.chosen_max_difference
    assert report.naive_changed >= report.chosen_changed == 0.0
    inner = away_from_edge((200, 300), 23)
    assert inner.sum() == (200 - 46) * (300 - 46) and not inner[:23].any() and inner[23, 23]
    assert away_from_edge((30, 30), 23).sum() == 0  # all within the radius of an edge


def test_a_quantized_onnx_model_runs_on_the_page(tmp_path):
    """A quantized .onnx model (bring your own INT8): the page loads it, runs it at auto
    (as it is) and int8, with no FP32 reference to wait for, and FP32 is one sentence."""
    from seamline.core.models.modelio import load_model
    from seamline.core.optimise.quantize import quantize, save_quantized

    path = save_quantized(quantize(load_model("demo"), make_scene(256, 256, seed=3)[0]),
                          tmp_path / "mine.onnx")  # fmt: skip
    state = InferenceState(ModelCache(), model=str(path), scene=make_scene(192, 160, seed=7)[0],
                           tile_size=128)  # fmt: skip
    auto = state.run()
    assert auto.backend == "int8" and auto.choice is None and auto.agreement_fp32 is None
    state.precision = "int8"
    int8 = state.run()
    assert int8.backend == "int8" and state.reference_seconds is None and state.message == ""
    state.precision = "fp32"
    assert state.run() is None
    assert "is quantized (INT8): run it at int8 or auto" in state.message
    assert "\n" not in state.message


def test_the_server_warms_up_with_a_quantized_onnx_model(tmp_path):
    """`seamline serve --model mine.onnx` failed at start ("model 'demo' is int8; load it
    again"): its warm-up asked for the FP32 model."""
    import os
    import subprocess
    import sys

    from seamline.app.cli_args import MODELS_ENV
    from seamline.core.models.modelio import load_model
    from seamline.core.optimise.quantize import quantize, save_quantized

    path = save_quantized(quantize(load_model("demo"), make_scene(256, 256, seed=3)[0]),
                          tmp_path / "mine.onnx")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", "import seamline.app.warmup"],
                          env=os.environ | {MODELS_ENV: str(path)}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
