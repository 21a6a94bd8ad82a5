"""--precision auto (issue #20): the fastest backend that agrees with FP32, measured once per
model, tile and machine; INT8 graphs and the choice kept on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import seamline.core.optimise.auto as auto
import seamline.core.optimise.flops as flops
import seamline.core.optimise.quantize as quantize_module
from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.hardware import bf16_is_native
from seamline.core.models.modelio import load_model
from seamline.core.optimise.auto import (
    BACKENDS,
    MIN_AGREEMENT,
    auto_backend,
    cached_choice,
    candidates,
    choose_backend,
)
from seamline.core.optimise.quantize import calibration_tiles, quantize

EAGER = [BACKENDS["fp32"], BACKENDS["int8"]]  # quick: no compilation


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def tiles(demo):
    return calibration_tiles(make_scene(256, 256, seed=21)[0], demo, tile_size=64, count=4)


def test_candidates_follow_the_cpu():
    names = [b.name for b in candidates("cpu")]
    assert names[:2] == ["fp32", "fp32+compile"] and "int8" in names
    assert ("bf16" in names) == bf16_is_native()  # never BF16 where it is emulated


def test_the_choice_is_the_fastest_that_agrees_and_is_cached(demo, tiles, monkeypatch):
    choice = choose_backend(demo, tiles, tile_size=64, backends=EAGER)
    rows = {m.backend: m for m in choice.measurements}
    assert set(rows) == {"fp32", "int8"} and not choice.from_cache
    assert all(m.kept == (m.agreement >= MIN_AGREEMENT) for m in rows.values())
    fastest = min((m for m in rows.values() if m.kept), key=lambda m: m.ms_per_tile)
    assert choice.backend == fastest.backend and choice.backend in choice.reason
    assert choice.gflop_per_tile > 0 and all(m.gflops > 0 for m in rows.values())
    table = choice.table()
    assert [r["chosen"] for r in table].count(True) == 1
    assert next(r for r in table if r["backend"] == "fp32")["speedup"] == 1.0

    def no_build(*args, **kwargs):
        raise AssertionError("a cached choice builds nothing")

    monkeypatch.setattr(auto, "build_backend", no_build)
    again = choose_backend(demo, tiles, tile_size=64, backends=EAGER)
    assert again.from_cache and again.backend == choice.backend
    assert [m.ms_per_tile for m in again.measurements] == [m.ms_per_tile for m in rows.values()]
    assert cached_choice(demo, tile_size=64, backends=EAGER) == again
    assert cached_choice(demo, tile_size=128, backends=EAGER) is None  # per tile size


def test_a_backend_that_disagrees_with_fp32_is_never_chosen(demo, tiles, monkeypatch):
    real = auto.build_backend

    def build(model, backend, **kwargs):
        built = real(model, backend, **kwargs)
        if backend.name != "int8":
            return built
        wrong = built.module

        class Shuffled(torch.nn.Module):  # fast and wrong: the classes rolled by one
            channels_last = False

            def forward(self, x):
                return wrong(x).roll(1, dims=1)

        return built.with_module(Shuffled(), precision="int8")

    monkeypatch.setattr(auto, "build_backend", build)
    choice = choose_backend(demo, tiles, tile_size=64, backends=EAGER, cache=False)
    int8 = next(m for m in choice.measurements if m.backend == "int8")
    assert not int8.kept and int8.agreement < MIN_AGREEMENT and "agrees on" in int8.note
    assert choice.backend == "fp32"


def test_a_job_teaches_auto_what_its_backend_costs_per_tile(monkeypatch, tmp_path):
    """A backend's forward alone ranked them wrongly: INT8's calls in flight overlap the rest
    of a job, a compiled module's job runs it in turn (AMD EPYC, 4096^2: 49 against 58 ms a
    tile in the job, 36 against 39 alone). Each job's cost is learned for the next pick."""
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path))
    rows = (
        auto.Measurement("fp32", 120.0, 1.0, 2.0, 1.0, True, warm_build_s=2.0),
        auto.Measurement("bf16+compile", 38.0, 1.0, 7.0, 1.0, True, warm_build_s=0.1),
        auto.Measurement("int8", 40.0, 1.0, 8.0, 1.0, True, warm_build_s=0.5),
    )
    table = auto.Choice("int8", "", rows, 512, 1, "cpu", "cpu", 15.0, key="k")
    auto._store(table)
    assert auto._read_choice("k").best_for(81).backend == "bf16+compile"  # by forwards alone
    ran = replace(table, backend="bf16+compile")
    assert auto.learn_job(ran, 81 * 0.058, 81).best_for(81).backend == "int8"  # 58 ms a tile
    # the job's choice may carry its own build (a calibration): the stored table keeps 0.5 s
    calibrating = replace(table, measurements=(*rows[:2], replace(rows[2], warm_build_s=8.0)))
    stored = auto.learn_job(replace(calibrating, backend="int8"), 81 * 0.049, 81)
    int8 = next(m for m in stored.measurements if m.backend == "int8")
    assert int8.job_ms_per_tile == pytest.approx(49.0) and int8.warm_build_s == 0.5
    assert stored.best_for(81).backend == "int8"  # 0.5 + 81 x 49 ms < 0.1 + 81 x 58 ms
    # a job slowed by other work on the machine (110 ms a tile) does not demote INT8 for good
    slowed = auto.learn_job(replace(table, backend="int8"), 81 * 0.110, 81)
    assert next(m for m in slowed.measurements if m.backend == "int8").job_ms_per_tile == (
        pytest.approx(49.0))  # fmt: skip
    assert slowed.best_for(81).backend == "int8"
    assert auto.learn_job(ran, 0.01, 4) == ran  # a small job teaches nothing
    # eager BF16 (49 ms alone) is not tried on its forward alone: its kind (in turn) took
    # 58 / 38 of its forwards in bf16+compile's job, so 361 tiles cost it ~27 s, not ~19 s
    eager = auto.Measurement("bf16", 49.0, 1.0, 1.1, 1.0, True, warm_build_s=1.1)
    bf16c = next(m for m in stored.measurements if m.backend == "bf16+compile")
    without_int8 = replace(stored, measurements=(stored.measurements[0], bf16c, eager))
    assert eager.job_seconds(361) < bf16c.job_seconds(361)  # by its forward alone
    assert without_int8.job_overhead(eager) == pytest.approx(58 / 38)
    assert without_int8.best_for(361).backend == "bf16+compile"
    assert stored.job_overhead(int8) == pytest.approx(49 / 40)  # its own kind: in flight
    assert auto.learn_job(replace(ran, key="unknown"), 5.0, 81).key == "unknown"  # no entry


def test_a_small_job_does_not_pay_a_compiled_backends_build():
    rows = (
        auto.Measurement("fp32", 80.0, 1.0, 0.1, 1.0, True, warm_build_s=0.1),
        auto.Measurement("bf16+compile", 16.0, 1.0, 17.0, 1.0, True, warm_build_s=4.0),
        auto.Measurement("bf16", 33.0, 1.0, 0.3, 1.0, True, warm_build_s=0.3),
        auto.Measurement("int8", 10.0, 0.9, 3.0, 1.0, False, warm_build_s=0.3),  # disagrees
    )
    choice = auto.Choice("bf16+compile", "", rows, 512, 1, "cpu", "cpu", 15.0)
    assert choice.best_for(float("inf")).backend == "bf16+compile"
    assert choice.best_for(100).backend == "bf16"  # 4 s of compile > 100 x 17 ms saved
    assert choice.best_for(1000).backend == "bf16+compile"
    assert choice.best_for(1).backend == "fp32"
    assert choice.best_for(float("inf"), compiled=False).backend == "bf16"  # for dask workers


def test_a_compiled_backend_agrees_with_fp32(tiles):
    """One compiled candidate end to end (a small net: compiling the U-Net takes ~20 s)."""
    from seamline.core.demo.unet import ConvNet

    torch.manual_seed(0)
    net = ConvNet(bands=6, classes=3, width=8, depth=3).eval()
    model = load_model(net, bands=["blue", "green", "red", "nir", "swir1", "swir2"])
    backends = [BACKENDS["fp32"], BACKENDS["fp32+compile"]]
    choice = choose_backend(model, tiles, tile_size=64, backends=backends, cache=False)
    compiled = next(m for m in choice.measurements if m.backend == "fp32+compile")
    assert compiled.kept and compiled.agreement >= MIN_AGREEMENT, compiled
    assert compiled.warm_build_s > 0 and compiled.note == ""


def test_int8s_warm_build_is_its_cached_graph_not_its_calibration(demo, tiles):
    """A later process loads the INT8 graph from the disk cache: that, not the first
    calibration, is what a job weighs against a compiled backend's warm build."""
    mine = tiles[:3] + 0.25  # tiles no other test calibrated on: calibrated here
    choice = choose_backend(demo, mine, tile_size=64, backends=EAGER, cache=True)
    int8 = next(m for m in choice.measurements if m.backend == "int8")
    fp32 = next(m for m in choice.measurements if m.backend == "fp32")
    assert 0 < int8.warm_build_s < int8.build_s  # calibrating is paid once per machine
    assert fp32.warm_build_s == fp32.build_s  # nothing kept on disk: built again


def test_int8_pays_its_calibration_on_a_scene_it_was_not_calibrated_on(demo, tiles,
                                                                        monkeypatch):  # fmt: skip
    """A cached table where INT8 is fastest and cheap to load, whose own INT8 graph left the
    disk cache: a scene whose INT8 graph is in the cache runs INT8; a new scene would
    calibrate (its first build, here 1000 s), so the job runs FP32 instead."""
    measured = choose_backend(demo, tiles, tile_size=64, backends=EAGER)
    rows = {"fp32": replace(next(m for m in measured.measurements if m.backend == "fp32"),
                            ms_per_tile=10.0, build_s=0.0, warm_build_s=0.0, kept=True),
            "int8": replace(next(m for m in measured.measurements if m.backend == "int8"),
                            ms_per_tile=1.0, build_s=1000.0, warm_build_s=0.01, kept=True)}
    table = replace(measured, measurements=tuple(rows.values()), from_cache=True, int8_graph="")
    monkeypatch.setattr(auto, "cached_choice", lambda *args, **kwargs: table)
    monkeypatch.setattr(auto, "_store", lambda choice: None)  # the crafted table stays here
    seen, new = (make_scene(256, 256, seed=s)[0] for s in (61, 62))
    quantize(demo, calibration_tiles(seen, demo, tile_size=64))  # calibrated on before
    built, choice = auto_backend(demo, seen, tile_size=64, tiles=100, allow_compile=False)
    assert choice.backend == "int8" and built.precision == "int8"
    assert built.metadata["quantization"]["from_cache"] is True
    built, choice = auto_backend(demo, new, tile_size=64, tiles=100, allow_compile=False)
    assert choice.backend == "fp32" and built.precision == "fp32"  # 1000 s > 100 x 10 ms
    # --calibration asks for that calibration: its cost is the user's, INT8 runs calibrated
    built, choice = auto_backend(demo, new, tile_size=64, tiles=100, allow_compile=False,
                                 calibrate=True)  # fmt: skip
    assert choice.backend == "int8" and not built.metadata["quantization"]["from_cache"]


def test_a_module_with_calls_in_flight_is_timed_as_jobs_run_it(monkeypatch):
    """INT8 on ONNX Runtime keeps two calls in flight in the tile stream; timing it one call
    at a time under-rated it (47 vs 37 ms per tile on an AMD EPYC)."""
    import threading
    import time

    class TwoAtATime(torch.nn.Module):
        in_flight = peak = 0
        lock = threading.Lock()

        def forward(self, x):
            with self.lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            time.sleep(0.02)  # a session busy on its own thread
            with self.lock:
                self.in_flight -= 1
            return x

        def parallel_forward(self):
            return self.forward, 2

    module = TwoAtATime()
    monkeypatch.setattr(flops, "wall_seconds", lambda run, device: (run(), 1.0)[1])  # 1 s a round
    ms = flops.ms_per_tile(replace(load_model("demo"), module=module), torch.zeros(2, 6, 8, 8), 1)
    assert module.peak == 2  # two batches at a time, as the stream runs them
    assert ms == 500.0  # a round's time over the two tiles it ran


def test_a_small_scenes_tiles_are_timed_at_the_jobs_tile_size(demo):
    """A scene smaller than a tile gives calibration tiles of its size: they were timed as
    they were, and a table measured on 96 px tiles ranked backends for 256 px jobs."""
    seen = []

    class Recorder(torch.nn.Module):
        align = 4

        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.module(x)

    small = calibration_tiles(make_scene(96, 96, seed=4)[0], demo, tile_size=256, count=2)
    assert small.shape[-2:] == (96, 96)
    model = replace(demo, module=Recorder(demo.module))
    choice = choose_backend(model, small, tile_size=256, backends=[BACKENDS["fp32"]], cache=False)
    assert seen[-flops.RUNS:] == [(1, 6, 256, 256)] * flops.RUNS  # timed at the job's size
    assert (1, 6, 96, 96) in seen  # judged on the scene's own pixels
    assert choice.measurements[0].agreement == 1.0


def test_int8_is_calibrated_once_per_model_and_calibration(demo, tiles, monkeypatch):
    mine = tiles[1:] + 0.5  # tiles no other test calibrated on
    first = quantize(demo, mine)
    assert first.metadata["quantization"]["from_cache"] is False

    def no_calibration(*args, **kwargs):
        raise AssertionError("the INT8 graph comes from the disk cache")

    monkeypatch.setattr(quantize_module, "_quantized_onnx", no_calibration)
    second = quantize(demo, mine)
    assert second.metadata["quantization"]["from_cache"] is True
    assert second.module.onnx_bytes == first.module.onnx_bytes
    with pytest.raises(AssertionError, match="disk cache"):  # other tiles: calibrated again
        quantize(demo, mine[:2])
    with pytest.raises(AssertionError, match="disk cache"):
        quantize(demo, mine, cache=False)


def test_a_cached_int8_graph_is_read_without_importing_onnx(demo, tiles, tmp_path, monkeypatch):
    """A process that finds its INT8 graph in the disk cache parses nothing: the graph's FP32
    layers are kept beside it (importing onnx cost every `--precision int8` run 0.6 s)."""
    mine = tiles[1:] + 0.25  # tiles no other test calibrated on
    first = quantize(demo, mine)
    np.save(tmp_path / "tiles.npy", mine)
    code = (
        "import sys, numpy as np; from seamline.core.models.modelio import load_model; "
        "from seamline.core.optimise.quantize import quantize; "
        f"m = quantize(load_model('demo'), np.load({str(tmp_path / 'tiles.npy')!r})); "
        "q = m.metadata['quantization']; "
        "print(q['from_cache'], q['fp32_layers'], 'onnx' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[]", "False"]  # cached, its layers, onnx unread
    monkeypatch.setattr(quantize_module, "_fp32_layers", lambda graph: pytest.fail("parsed"))
    again = quantize(demo, mine)
    assert again.metadata["quantization"]["fp32_layers"] == first.metadata["quantization"][
        "fp32_layers"]  # fmt: skip


def test_auto_runs_its_int8_graph_on_a_new_scene_without_calibrating(demo, monkeypatch):
    """Auto's INT8 is calibrated once per model and tile size, on the scene it first measured
    on: a job on another scene reads, hashes and calibrates no tiles (it recalibrated on each
    new scene, 6-8 s, and read its tiles in every process, ~0.5 s at 4096^2). A graph that
    left the disk cache is calibrated again on the job's scene and kept for the next jobs."""
    from seamline.core.diskcache import cache_dir

    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    monkeypatch.setattr(auto, "ms_per_tile", lambda model, tiles, batch, size: (
        1.0 if model.precision == "int8" else 100.0))  # INT8 picked, whatever this CPU does
    first, choice = auto_backend(demo, make_scene(160, 160, seed=31)[0], tile_size=80)
    assert choice.backend == "int8" and choice.int8_graph
    stored = auto.cached_choice(demo, tile_size=80, backends=EAGER)
    assert stored.int8_graph == choice.int8_graph

    def unused(*args, **kwargs):
        raise AssertionError("auto's INT8 graph comes from the disk cache")

    with monkeypatch.context() as patch:
        for module, name in ((auto, "calibration_tiles"), (auto, "quantized_before"),
                             (quantize_module, "_quantized_onnx")):  # fmt: skip
            patch.setattr(module, name, unused)
        other, again = auto_backend(demo, make_scene(160, 160, seed=32)[0], tile_size=80)
    assert again.backend == "int8" and other.module.onnx_bytes == first.module.onnx_bytes
    (cache_dir() / "int8" / f"{choice.int8_graph}.onnx").unlink()  # the graph is gone
    rebuilt, _ = auto_backend(demo, make_scene(160, 160, seed=33)[0], tile_size=80)
    assert rebuilt.precision == "int8" and not rebuilt.metadata["quantization"]["from_cache"]
    kept = auto.cached_choice(demo, tile_size=80, backends=EAGER).int8_graph
    assert kept == rebuilt.metadata["quantization"]["key"] != choice.int8_graph
    # --calibration SCENE: calibrated on it although the table keeps a graph, checked
    # against FP32 on its tiles, and kept for the next jobs
    own, _ = auto_backend(demo, make_scene(160, 160, seed=34)[0], tile_size=80, calibrate=True)
    stored = auto.cached_choice(demo, tile_size=80, backends=EAGER)
    assert own.precision == "int8" and stored.int8_graph == own.metadata["quantization"]["key"]
    assert stored.int8_graph != kept
    int8_row = next(m for m in stored.measurements if m.backend == "int8")
    assert int8_row.kept and int8_row.agreement >= auto.MIN_AGREEMENT
    # a recalibrated graph that disagrees with FP32 leaves INT8 out: the next fastest runs
    monkeypatch.setattr(flops, "MIN_AGREEMENT", 1.01)  # judged there
    fallback, picked = auto_backend(demo, make_scene(160, 160, seed=35)[0], tile_size=80,
                                    calibrate=True)  # fmt: skip
    assert fallback.precision == "fp32" and picked.backend == "fp32"
    stored = auto.cached_choice(demo, tile_size=80, backends=EAGER)
    int8_row = next(m for m in stored.measurements if m.backend == "int8")
    assert not int8_row.kept and int8_row.note.startswith("recalibrated: agrees on")
    assert stored.int8_graph == own.metadata["quantization"]["key"]  # the last good one


def test_auto_skips_measuring_for_a_small_job_and_reports_why(demo):
    scene = make_scene(96, 96, seed=2)[0]
    model, choice = auto_backend(demo, scene, tile_size=512, tiles=1)
    assert choice is None and model is demo  # nothing measured for one tile
    int8 = quantize(demo, calibration_tiles(scene, demo, tile_size=64))
    assert auto_backend(int8, scene, tile_size=64, tiles=100) == (int8, None)  # runs as it is


def test_cli_predict_auto_measures_once_then_reads_the_cache(tmp_path, capsys, monkeypatch):
    source = write_raster(make_scene(384, 384, seed=5)[0], tmp_path / "scene.tif")
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    argv = ["predict", str(source), str(tmp_path / "auto.tif"), "--tile-size", "96"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    first = json.loads(out)["backend"]
    assert first["name"] in ("fp32", "int8") and not first["from_cache"]
    assert "measuring 2 backends for model 'demo' at 96 px tiles" in err  # a first run says why
    assert main(argv) == 0
    out, err = capsys.readouterr()
    second = json.loads(out)["backend"]
    assert "measuring" not in err and second["from_cache"]
    learned = auto.cached_choice(load_model("demo"), tile_size=96, backends=EAGER)
    rows = {m.backend: m for m in learned.measurements}
    assert rows[first["name"]].job_ms_per_tile > 0  # the first job taught its cost per tile
    assert second["ms_per_tile"] == rows[second["name"]].ms_per_tile  # its measured forward
    assert second["tile_size"] == 96
    if second["name"] == first["name"]:  # else auto tried the other one, as taught
        assert "ms a tile in its fastest job" in second["reason"]
    assert main([*argv, "--no-cache"]) == 0
    assert not json.loads(capsys.readouterr().out)["backend"]["from_cache"]
    small = write_raster(make_scene(64, 64, seed=6)[0], tmp_path / "small.tif")
    assert main(["predict", str(small), str(tmp_path / "s.tif"), "--tile-size", "128"]) == 0
    reason = json.loads(capsys.readouterr().out)["backend"]["reason"]
    assert "1 tile < 16, not worth measuring" in reason and "--tile-size 128" in reason
    code = main(["predict", str(source), str(tmp_path / "x.tif"), "--backend", "compile"])
    assert code == 2 and "--backend compile picks a backend by hand" in capsys.readouterr().err


def test_a_calibration_scene_unlike_the_job_drops_int8_and_predict_says_so(
    tmp_path, capsys, monkeypatch
):
    """Calibrated on a scene ten times darker, INT8 agreed with FP32 on that scene's tiles
    (99.9 %) and on 59 % of the job's pixels: auto ran it, and kept it for later jobs."""
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    scene = make_scene(448, 448, seed=31)[0]
    source = write_raster(scene, tmp_path / "scene.tif")
    dark = write_raster(scene.copy(data=scene.values // 10), tmp_path / "dark.tif")
    argv = ["predict", str(source), str(tmp_path / "out.tif"), "--tile-size", "112",
            "--calibration", str(dark)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["backend"]["name"] == "fp32"
    assert f"--calibration {str(dark)!r}: INT8 was dropped (calibrated on another" in err
    stored = auto.cached_choice(load_model("demo"), tile_size=112, backends=EAGER)
    int8 = next(m for m in stored.measurements if m.backend == "int8")
    assert not int8.kept and int8.note.startswith("calibrated on another scene: agrees on")
    assert main([*argv[:3], "--tile-size", "112"]) == 0  # a later job: no INT8 either
    assert json.loads(capsys.readouterr().out)["backend"]["name"] == "fp32"
    assert main([*argv, "--precision", "int8"]) == 0  # asked for: it runs, with a warning
    err = capsys.readouterr().err
    assert f"INT8 calibrated on {str(dark)!r} gives FP32's classes on only" in err
    assert main([*argv[:3], "--precision", "int8", "--calibration", str(source)]) == 0
    assert "gives FP32's classes on only" not in capsys.readouterr().err  # a scene like it


def test_bench_backends_prints_the_table_with_the_peaks(capsys, monkeypatch):
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    assert main(["bench", "--backends", "--tile-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in out["table"]} == {"fp32", "int8"}
    assert out["backends"]["peaks"]["fp32"] > 0
    fp32 = next(r for r in out["table"] if r["backend"] == "fp32")
    assert 0 < fp32["percent_of_peak"] < 100
    assert main(["bench", "--backends", "--tile-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "% peak" in text and "auto:" in text and "from the cache" in text


def test_a_learned_build_cost_replaces_the_in_process_estimate():
    rows = (auto.Measurement("fp32", 80.0, 1.0, 0.1, 1.0, True, warm_build_s=0.1),
            auto.Measurement("bf16+compile", 16.0, 1.0, 17.0, 1.0, True, warm_build_s=1.3))
    choice = auto.Choice("bf16+compile", "", rows, 512, 1, "cpu", "cpu", 15.0)
    learned = auto._with_build_seconds(choice, BACKENDS["bf16+compile"], 4.8)
    assert [m.warm_build_s for m in learned.measurements] == [0.1, 4.8]
    assert replace(learned, measurements=rows) == choice


def test_the_service_runs_the_fastest_eager_backend_and_says_which(monkeypatch):
    from starlette.testclient import TestClient

    from seamline.app.service import create_app
    from seamline.core.data.io import geotiff_bytes

    monkeypatch.setattr(auto, "candidates", lambda device="cpu": [*EAGER, BACKENDS["fp32+compile"]])
    with TestClient(create_app("demo", precision="auto", tile_size=64)) as client:
        health = client.get("/health").json()
        reply = client.post("/predict", content=geotiff_bytes(make_scene(96, 96, seed=8)[0]),
                            headers={"content-type": "image/tiff"})  # fmt: skip
    assert health["backend"] in ("fp32", "int8") and health["precision"] == health["backend"]
    assert reply.status_code == 200
    choice = cached_choice(load_model("demo"), tile_size=64, backends=EAGER)
    assert choice is not None and choice.backend == health["backend"]  # compile never measured


def test_fp16_is_for_cuda_and_refused_on_a_cpu_in_one_sentence(tmp_path, capsys):
    from seamline.core.serve.cache import ModelCache
    from tests.test_cli import assert_one_sentence_error

    assert all(b.precision != "fp16" for b in candidates("cpu"))  # a CPU emulates FP16
    scene = write_raster(make_scene(64, 64, seed=1)[0], tmp_path / "s.tif")
    out = tmp_path / "out.tif"
    code = main(["predict", str(scene), str(out), "--device", "cpu", "--precision", "fp16"])
    assert_one_sentence_error(code, capsys.readouterr().err, "FP16 runs on a CUDA GPU",
                              "--device cuda")  # fmt: skip
    assert not out.exists()
    with pytest.raises(Exception, match="FP16 runs on a CUDA GPU"):
        ModelCache().get("demo", precision="fp16", device="cpu")


def test_a_page_measuring_auto_holds_no_other_session_up(monkeypatch):
    """ModelCache.auto builds once per model and tile size; while it measures (up to a
    minute) other entries are served (the shared lock held every session up), and callers
    of the same entry wait for the one build."""
    import threading

    import seamline.core.serve.cache as cache_module
    from seamline.core.serve.cache import ModelCache

    started, release, calls = threading.Event(), threading.Event(), []

    def slow_measure(model, scene, **kwargs):
        calls.append(kwargs["tile_size"])
        started.set()
        assert release.wait(30)
        return model, None

    monkeypatch.setattr(cache_module, "auto_backend", slow_measure)
    cache = ModelCache(calibration=lambda model: None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.auto("demo", tile_size=64)))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    assert started.wait(30)
    assert cache.get("demo", precision="bf16").precision == "bf16"  # served meanwhile
    release.set()
    for thread in threads:
        thread.join(30)
    assert calls == [64] and len(results) == 2 and results[0] is results[1]  # built once


def test_auto_runs_fp32_and_says_why_where_it_cannot_measure(monkeypatch):
    import seamline.core.serve.cache as cache_module
    from seamline.core.errors import SeamlineWarning
    from seamline.core.serve.cache import ModelCache

    def fails(model, scene, **kwargs):
        raise RuntimeError("FlopCounterMode cannot count this module")

    monkeypatch.setattr(cache_module, "auto_backend", fails)
    cache = ModelCache(calibration=lambda model: None)
    with pytest.warns(SeamlineWarning, match="could not measure model 'demo'.*FlopCounter"):
        model, choice = cache.auto("demo", tile_size=64)
    assert model.precision == "fp32" and choice is None
    monkeypatch.setattr(cache_module, "auto_backend", lambda model, scene, **kwargs: (model, None))
    assert cache.auto("demo", tile_size=64)[0] is model  # tried again, not kept as failed
