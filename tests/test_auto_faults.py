"""--precision auto and its disk cache off the happy path: a cache that cannot be written, damaged
entries, a measurement that fails, devices and batch sizes this machine cannot run, an AOI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import seamline.core.optimise.auto as auto
from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InvalidArgumentError
from seamline.core.optimise.auto import BACKENDS
from seamline.core.optimise.backends import use_inductor_cache
from seamline.core.predict.stream import pick_device
from tests.test_cli import assert_one_sentence_error

EAGER = [BACKENDS["fp32"], BACKENDS["int8"]]  # quick: no compilation


@pytest.fixture
def scene(tmp_path) -> Path:
    return write_raster(make_scene(384, 384, seed=5)[0], tmp_path / "scene.tif")


def _predict(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


@pytest.mark.parametrize("cache", [True, False])
def test_inductor_works_in_a_folder_of_its_own_where_the_cache_cannot_be_written(
    tmp_path, monkeypatch, cache
):
    """A file where the cache folder should be (or a read-only home) made importing inductor
    fail with a traceback; ``--no-cache`` wrote 4 MB into the cache all the same."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file")
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(blocked if cache else tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_inductor_cache(cache)
    folder = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert folder.is_dir() and os.access(folder, os.W_OK)
    assert blocked not in folder.parents and not (tmp_path / "cache").exists()
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path / "writable"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "writable" / "inductor")


def test_predict_auto_measures_without_a_cache_it_cannot_write(scene, tmp_path, capsys,
                                                              monkeypatch):  # fmt: skip
    blocked = tmp_path / "cache-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(blocked))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    code, report, err = _predict(capsys, scene, tmp_path / "out.tif", "--tile-size", "96")
    assert code == 0 and "Traceback" not in err and (tmp_path / "out.tif").is_file()
    assert report["backend"]["name"] in ("fp32", "int8") and not report["backend"]["from_cache"]


def test_predict_runs_fp32_and_says_why_where_auto_cannot_measure(scene, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    """The README's promise, which only the dashboard's cache kept: the command line ended in
    a traceback instead."""
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path / "cache"))

    def fails(*args, **kwargs):
        raise RuntimeError("a layer ONNX cannot export\nand more detail")

    monkeypatch.setattr(auto, "choose_backend", fails)
    code, report, err = _predict(capsys, scene, tmp_path / "out.tif", "--tile-size", "96")
    warning = "could not measure model 'demo' (a layer ONNX cannot export): it runs FP32."
    assert code == 0 and warning in err and "Traceback" not in err
    assert report["backend"]["name"] == "fp32" and warning in report["backend"]["reason"]
    assert (tmp_path / "out.tif").is_file()


def test_calibration_that_auto_does_not_use_is_said(scene, tmp_path, capsys, monkeypatch):
    """--calibration calibrates auto's INT8: where another backend runs, nothing is
    calibrated, and predict says so (it said nothing)."""
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    monkeypatch.setattr(auto, "ms_per_tile", lambda model, tiles, batch, size: (
        100.0 if model.precision == "int8" else 1.0))  # FP32 picked, whatever this CPU does
    code, report, err = _predict(capsys, scene, tmp_path / "out.tif", "--tile-size", "96",
                                 "--calibration", scene)  # fmt: skip
    assert code == 0 and report["backend"]["name"] == "fp32"
    assert "auto ran fp32, faster here than INT8: --calibration calibrated nothing." in err
    code, report, err = _predict(capsys, scene, tmp_path / "out.tif", "--tile-size", "96",
                                 "--calibration", scene, "--precision", "fp32")  # fmt: skip
    assert code == 0 and "--calibration calibrates INT8 only: it is not used" in err  # was silent


def test_damaged_cache_entries_are_built_again_not_failures(scene, tmp_path, capsys,
                                                           monkeypatch):  # fmt: skip
    """A truncated INT8 graph, a garbage layer list or seam probe: each failed every later
    run (INVALID_PROTOBUF, JSONDecodeError) until the folder was deleted."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(cache))
    argv = (scene, tmp_path / "out.tif", "--tile-size", "96", "--precision", "int8")
    assert _predict(capsys, *argv)[0] == 0
    entries = [p for kind in ("int8", "seams") for p in (cache / kind).iterdir()]
    assert {p.suffix for p in entries} >= {".onnx", ".json"}
    for path in entries:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] or b"{")
    code, report, err = _predict(capsys, *argv)
    assert code == 0 and "Traceback" not in err and report["precision"] == "int8"
    for path in entries:  # written again, whole
        if path.suffix == ".json":
            json.loads(path.read_text())
    code, report, _ = _predict(capsys, *argv)
    assert code == 0 and report["precision"] == "int8"


def test_an_aoi_window_is_the_job_auto_weighs(scene, tmp_path, capsys, monkeypatch):
    """An AOI of one tile made auto measure for the whole scene's 16+ tiles (31 s for 0.05 s
    of prediction)."""
    import geopandas as gpd
    import rioxarray  # noqa: F401 -- .rio
    from shapely.geometry import box

    from seamline.core.data.io import open_raster

    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path / "cache"))
    grid = open_raster(scene)
    left, top = grid.rio.transform() * (0, 0)
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(left + 100, top - 600, left + 600, top - 100)],
                     crs=grid.rio.crs).to_file(aoi)  # fmt: skip
    code, report, err = _predict(capsys, scene, tmp_path / "out.tif", "--aoi", aoi,
                                 "--tile-size", "64")  # fmt: skip
    assert code == 0 and "measuring" not in err
    assert report["tiles"] < auto.AUTO_MIN_TILES and "not worth measuring" in (
        report["backend"]["reason"])  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_device_this_machine_lacks_is_one_sentence(scene, tmp_path, capsys, device):
    with pytest.raises(InvalidArgumentError, match="is not on this machine"):
        pick_device(device)
    code = main(["predict", str(scene), str(tmp_path / "out.tif"), "--device", device])
    assert_one_sentence_error(code, capsys.readouterr().err, f"Device {device!r}",
                              "--device auto or cpu")  # fmt: skip
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("size", ["0", "-1", "two"])
def test_a_batch_size_below_one_is_refused_before_any_work(scene, tmp_path, capsys, size):
    """0 ran as 1 in silence; -1 started a minute's measurement, then failed in torch.cat."""
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(scene), str(tmp_path / "out.tif"), "--batch-size", size])
    assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


def test_serve_api_refuses_a_calibration_scene_without_the_models_bands():
    """It started and served FP32 (auto's measurement failed on the scene, and fell back)."""
    from seamline.app.service import create_app
    from seamline.core.errors import BandMismatchError

    three = make_scene(96, 96, seed=3)[0].isel(band=slice(0, 3))
    with pytest.raises(BandMismatchError, match="^--calibration: "):
        create_app("demo", precision="auto", calibration=three, token="t")


def test_bench_remeasure_replaces_a_table_measured_on_a_busy_machine(tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    """A table measured while the machine was busy (FP32 at 38.7 ms where 8 ms was real)
    stayed for good: --no-cache measures without keeping, and deleting the folder was the
    only way."""
    from dataclasses import replace

    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "candidates", lambda device="cpu": EAGER)
    bench = ["bench", "--backends", "--tile-size", "64", "--json"]

    def fp32_ms(*extra: str) -> tuple[float, bool]:
        assert main([*bench, *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        row = next(r for r in out["table"] if r["backend"] == "fp32")
        return row["ms_per_tile"], out["backends"]["from_cache"]

    measured, _ = fp32_ms()
    stored = auto.cached_choice(_demo(), tile_size=64, backends=EAGER)
    busy = replace(stored, measurements=tuple(
        replace(m, ms_per_tile=1000 * measured) if m.backend == "fp32" else m
        for m in stored.measurements))  # fmt: skip
    auto._store(busy)
    assert fp32_ms() == (1000 * measured, True)  # the busy table stays
    again, from_cache = fp32_ms("--remeasure")
    assert not from_cache and again < 1000 * measured
    assert fp32_ms() == (again, True)  # kept for later jobs


def _demo():
    from seamline.core.models.modelio import load_model

    return load_model("demo")


def test_a_scene_without_the_models_bands_fails_before_the_model_runs(tmp_path, capsys):
    """The seam probe (and its warning) ran the model before the bands were checked."""
    from tests.conftest import write_tif

    data = make_scene(256, 256, seed=3)[0].values[:3]
    three = write_tif(tmp_path / "three.tif", data, descriptions=["blue", "green", "red"])
    code, _, err = _predict(capsys, three, tmp_path / "out.tif", "--overlap", "16")
    assert_one_sentence_error(code, err, "lack", "model 'demo'")
    assert not (tmp_path / "out.tif").exists()


def test_serve_api_names_the_bands_of_its_calibration_scene(tmp_path, capsys, monkeypatch):
    """The band error told serve-api's user to pass --band-names, which it did not have."""
    import numpy as np
    import uvicorn

    from tests.conftest import write_tif

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    data = (np.random.default_rng(0).random((6, 96, 96)) * 3000 + 1).astype("uint16")
    names = [f"b{i}" for i in range(6)]
    scene = write_tif(tmp_path / "named.tif", data, descriptions=names)
    argv = ["serve-api", "--precision", "fp32", "--calibration", str(scene)]
    assert_one_sentence_error(main(argv), capsys.readouterr().err, "--calibration", "--band-names")
    assert not served
    assert main([*argv, "--band-names", "blue,green,red,nir,swir1,swir2"]) == 0
    assert len(served) == 1
