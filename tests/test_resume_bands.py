"""Resumable --scheduler predictions (issue #21): a cluster run killed with -9 and started
again with --resume submits only the bands that reach the rows not done, and writes what an
uninterrupted run of the same bands writes, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.modelio import load_model
from seamline.core.predict.bands import bands_to_rerun, plan_bands
from seamline.core.predict.distributed import connect, predict_file_distributed
from seamline.core.predict.tilegrid import Blend, TileGrid
from tests.test_resume import TILING, journal_of, read_output, staged_rows_when

HEIGHT = 1536


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    scene, _ = make_scene(HEIGHT, 640, seed=9)
    scene[:, 400:700, :] = 0  # nodata across a band boundary: bands that run no tile
    return write_raster(scene, tmp_path_factory.mktemp("resume_bands") / "scene.tif")


@pytest.fixture(scope="module")
def client():
    with connect("local", n_workers=2, processes=False) as client:
        yield client


@pytest.mark.parametrize("done", [0, 1, 191, 192, 256, 700, 1300, HEIGHT])
def test_bands_to_rerun_are_every_band_that_reaches_a_row_not_done(done):
    grid = TileGrid(HEIGHT, 640, 256, 64, Blend.COSINE, 1)
    bands = plan_bands(grid, 300)
    first = bands_to_rerun(bands, grid, done)
    reach = [int(grid.rows[stop - 1]) + grid.tile for _, stop in bands]  # last row + 1
    assert all(end <= done for end in reach[:first])  # skipped: every row they add to is done
    assert all(end > done for end in reach[first:])


@pytest.mark.parametrize("probabilities", [False, True])
def test_an_interrupted_cluster_run_resumes_to_the_same_output(
    client, scene, tmp_path, monkeypatch, probabilities
):
    """Bands of about one tile row; the run stops (Ctrl-C) after ~half the rows are staged."""
    import seamline.core.predict.resume as resume

    options = {"model": load_model("demo"), "scheduler": client, "block_size": 200,
               "probabilities": probabilities, "tile_size": 256, "overlap": 64}  # fmt: skip
    full = predict_file_distributed(scene, tmp_path / "reference.tif", **options)
    real_put = resume.StagedRows.put

    def failing_put(self, a, b, out):
        if b > HEIGHT // 2:
            raise KeyboardInterrupt
        real_put(self, a, b, out)

    monkeypatch.setattr(resume.StagedRows, "put", failing_put)
    with pytest.raises(KeyboardInterrupt):
        predict_file_distributed(scene, tmp_path / "out.tif", resume=True, **options)
    staged = json.loads(journal_of(tmp_path / "out.tif").read_text())["rows_done"]
    assert 0 < staged <= HEIGHT // 2 and not (tmp_path / "out.tif").exists()
    monkeypatch.setattr(resume.StagedRows, "put", real_put)
    report = predict_file_distributed(scene, tmp_path / "out.tif", resume=True, **options)
    assert report["resumed_from_row"] == staged
    assert 0 < report["bands_run"] < report["bands"] == full["bands"]
    assert report["tiles"] < full["tiles"]
    np.testing.assert_array_equal(read_output(tmp_path / "out.tif")[0],
                                  read_output(tmp_path / "reference.tif")[0])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "reference.tif"]


def test_another_block_size_starts_over(client, scene, tmp_path, monkeypatch):
    """Bands group a shared row's sums: rows staged with other bands are not reused."""
    options = {"model": load_model("demo"), "scheduler": client, "tile_size": 256,
               "overlap": 64}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        predict_file_distributed(scene, tmp_path / "out.tif", resume=True, block_size=200,
                                 progress=lambda done, total: _interrupt(done >= 3),
                                 **options)  # fmt: skip
    assert json.loads(journal_of(tmp_path / "out.tif").read_text())["rows_done"] > 0
    report = predict_file_distributed(scene, tmp_path / "out.tif", resume=True,
                                      block_size=600, **options)  # fmt: skip
    assert report["resumed_from_row"] == 0 and report["bands_run"] == report["bands"]
    assert not journal_of(tmp_path / "out.tif").exists()


def _interrupt(now: bool) -> None:
    if now:
        raise KeyboardInterrupt


def test_kill_9_of_a_local_cluster_run_then_resume(scene, tmp_path, capsys):
    """The whole job (client, scheduler and worker processes) killed at once, as a batch
    system kills a job, after a third of the rows; then the same command with --resume."""
    argv = [str(scene), "--scheduler", "local", "--block-size", "200", "--resume", *TILING]
    reference = tmp_path / "reference.tif"
    assert main(["predict", argv[0], str(reference), *argv[1:]]) == 0
    full = json.loads(capsys.readouterr().out)
    out = tmp_path / "classes.tif"
    exe = str(Path(sys.executable).with_name("seamline"))
    proc = subprocess.Popen([exe, "predict", argv[0], str(out), *argv[1:]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    done = staged_rows_when(proc, out, HEIGHT // 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and 0 < done < HEIGHT, done
    assert not out.exists() and journal_of(out).exists()

    assert main(["predict", argv[0], str(out), *argv[1:]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resumed_from_row"] >= done and report["tiles"] < full["tiles"]
    expected, got = read_output(reference), read_output(out)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "reference.tif"]
