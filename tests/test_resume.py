"""Resumable predictions (issue #21): a predict killed with -9 and started again with
--resume computes only the rows not done and writes the same class map, bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.modelio import load_model
from seamline.core.predict.file import predict_file
from seamline.core.predict.resume import first_tile_row

TILING = ["--tile-size", "256", "--overlap", "64", "--precision", "fp32"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_raster(make_scene(1536, 640, seed=9)[0],
                        tmp_path_factory.mktemp("resume") / "scene.tif")  # fmt: skip


def read_output(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


def journal_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.resume.json")


def staged_rows_when(proc: subprocess.Popen, out: Path, rows: int, timeout: float = 180) -> int:
    """Rows staged for ``out`` once ``proc`` staged at least ``rows`` of them (or ended, or
    ``timeout`` seconds passed), read from its journal."""
    deadline, done = time.time() + timeout, 0
    while proc.poll() is None and time.time() < deadline:
        try:
            done = json.loads(journal_of(out).read_text())["rows_done"]
        except (OSError, ValueError):
            done = 0
        if done >= rows:
            break
        time.sleep(0.05)
    return done


def test_first_tile_row_is_the_first_that_reaches_the_row():
    starts = np.array([0, 192, 384, 576])  # tile 256
    assert [first_tile_row(starts, 256, r) for r in (0, 255, 256, 448, 640, 832)] == \
        [0, 0, 1, 2, 3, 4]  # fmt: skip


def test_kill_9_then_resume_gives_the_uninterrupted_class_map(scene, tmp_path, capsys):
    reference = tmp_path / "reference.tif"
    assert main(["predict", str(scene), str(reference), *TILING]) == 0
    full = json.loads(capsys.readouterr().out)
    out = tmp_path / "classes.tif"
    exe = str(Path(sys.executable).with_name("seamline"))
    proc = subprocess.Popen([exe, "predict", str(scene), str(out), "--resume", *TILING],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    done = staged_rows_when(proc, out, 1536 // 3)  # a third of the rows staged
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and 0 < done < 1536, done
    assert not out.exists() and journal_of(out).exists()

    assert main(["predict", str(scene), str(out), "--resume", *TILING]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resumed_from_row"] >= done
    assert report["tiles"] < full["tiles"]  # only the tile rows that reach the rest
    expected, got = read_output(reference), read_output(out)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "reference.tif"]


def test_resumed_probabilities_equal_an_uninterrupted_run(scene, tmp_path, monkeypatch):
    """Rows staged by a run that failed half-way (in process), then resumed."""
    import seamline.core.predict.resume as resume

    demo = load_model("demo")
    options = {"model": demo, "probabilities": True, "tile_size": 256, "overlap": 64}
    predict_file(scene, tmp_path / "reference.tif", **options)
    real_put = resume.StagedRows.put

    def failing_put(self, a, b, out):
        if b > 700:
            raise KeyboardInterrupt  # as Ctrl-C half-way
        real_put(self, a, b, out)

    monkeypatch.setattr(resume.StagedRows, "put", failing_put)
    with pytest.raises(KeyboardInterrupt):
        predict_file(scene, tmp_path / "probs.tif", resume=True, **options)
    monkeypatch.setattr(resume.StagedRows, "put", real_put)
    report = predict_file(scene, tmp_path / "probs.tif", resume=True, **options)
    assert 0 < report["resumed_from_row"] <= 700
    np.testing.assert_array_equal(read_output(tmp_path / "probs.tif")[0],
                                  read_output(tmp_path / "reference.tif")[0])  # fmt: skip


def test_a_journal_of_another_job_starts_over(scene, tmp_path):
    out = tmp_path / "classes.tif"
    demo = load_model("demo")
    with pytest.raises(KeyboardInterrupt):
        predict_file(scene, out, model=demo, resume=True, tile_size=256, overlap=64,
                     progress=lambda done, total: _interrupt(done > 10))  # fmt: skip
    assert journal_of(out).exists()
    report = predict_file(scene, out, model=demo, resume=True, tile_size=256, overlap=32)
    assert report["resumed_from_row"] == 0 and report["tiles"] == report["grid_tiles"]
    assert not journal_of(out).exists()


def _interrupt(now: bool) -> None:
    if now:
        raise KeyboardInterrupt
