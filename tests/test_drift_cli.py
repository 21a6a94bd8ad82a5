"""`seamline drift`: baseline, check and history from the command line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from seamline.app.cli import main
from seamline.core.data.io import write_raster
from seamline.core.demo.series import SeriesEvents, make_series
from tests.test_cli import assert_one_sentence_error, run

EVENTS = SeriesEvents(
    recalibration_index=None, construction_start_index=4, construction_rate=0.2, cloudy_indices=()
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Five 96 x 96 summer scenes: 0-3 unchanged, 4 with construction; labels of scene 4."""
    folder = tmp_path_factory.mktemp("drift_cli")
    items = make_series(5, height=96, width=96, start="2024-05-01", freq_days=4, events=EVENTS)
    paths = [write_raster(s.scene, folder / f"scene{i}.tif") for i, s in enumerate(items)]
    labels = write_raster(items[4].labels, folder / "labels4.tif")
    four_bands = items[0].scene.isel(band=[0, 1, 2, 3])
    four_bands.attrs["long_name"] = tuple(four_bands["band"].values)
    four = write_raster(four_bands, folder / "four_bands.tif")
    crop = write_raster(items[3].scene.isel(x=slice(0, 64)), folder / "crop.tif")
    return paths, labels, four, crop


@pytest.fixture(scope="module")
def baseline(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "baseline.json"
    assert main(["drift", "baseline", *map(str, scenes[0][:3]), "--out", str(out),
                 "--tile-size", "16"]) == 0  # fmt: skip
    return out


def test_baseline_check_history(capsys, scenes, baseline, tmp_path):
    paths, labels, *_ = scenes
    fitted = json.loads(baseline.read_text())
    assert fitted["calibration"] == "leave-one-out" and fitted["scenes"] == 3
    db, map_out = tmp_path / "history.sqlite", tmp_path / "map.tif"

    code, out, _ = run(capsys, "drift", "check", paths[3], "--baseline", baseline, "--db", db,
                       "--time", "2024-05-13T10:00:00Z")  # fmt: skip
    quiet = json.loads(out)
    assert code == 0 and quiet["drift"] is False and quiet["threshold"] == 1.0
    assert set(quiet["metrics"]["nir"]) == {"psi", "wasserstein", "ks"}
    assert quiet["metrics"]["nir"]["ks"]["threshold"] > 0 and quiet["time"].endswith("+00:00")

    code, out, _ = run(capsys, "drift", "check", paths[4], "--baseline", baseline, "--db", db,
                       "--time", "2024-05-17", "--map-out", map_out)  # fmt: skip
    built = json.loads(out)
    assert code == 0 and built["drift"] is True and built["score"] > 1
    assert built["map_path"] == str(map_out) and 0 < built["map"]["drifted_share"] < 0.5
    with rasterio.open(map_out) as src:
        assert src.shape == (6, 6) and src.crs.to_epsg() == 32633
        assert np.nanmax(src.read(1)) > 1

    code, out, _ = run(capsys, "drift", "history", "--db", db)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 2 * (1 + 7 * 3 + 1)  # score, 7 x 3 metrics, map share
    assert [r["value"] for r in rows if r["metric"] == "score"] == [
        str(quiet["score"]),
        str(built["score"]),
    ]
    code, out, _ = run(capsys, "drift", "history", "--db", db, "--format", "json")
    records = json.loads(out)["records"]
    assert code == 0 and len(records) == len(rows)
    assert {r["map_path"] for r in records if r["time"].startswith("2024-05-17")} == {str(map_out)}


def test_model_and_labels(capsys, scenes, tmp_path):
    paths, labels, *_ = scenes
    out = tmp_path / "with_model.json"
    code, stdout, _ = run(capsys, "drift", "baseline", paths[0], paths[1], "--out", out,
                          "--model", "demo", "--tile-size", "16")  # fmt: skip
    assert code == 0 and json.loads(stdout)["classes"][3] == "built-up"
    db = tmp_path / "h.sqlite"
    code, stdout, _ = run(capsys, "drift", "check", paths[4], "--baseline", out, "--db", db,
                          "--time", "2024-05-17", "--labels", labels)  # fmt: skip
    report = json.loads(stdout)
    assert code == 0 and report["metrics"]["prediction"]["js"]["drift"] is True
    assert report["metrics"]["labels"]["accuracy"]["value"] > 0.9
    assert "threshold" not in report["metrics"]["labels"]["miou"]


def test_bad_inputs_one_sentence_no_output(capsys, scenes, baseline, tmp_path):
    paths, labels, four, crop = scenes
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "seamline-drift-baseline", "version": 1, "bands": [')
    foreign = tmp_path / "foreign.sqlite"
    foreign.write_text("not a database")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(Path(paths[3]).read_bytes()[:4000])
    db, map_out = tmp_path / "history.sqlite", tmp_path / "map.tif"
    check = ["drift", "check", paths[3], "--db", db, "--time", "2024-05-13"]
    cases = [
        ([*check, "--baseline", corrupt, "--map-out", map_out], ["corrupt.json", "not valid JSON"]),
        ([*check, "--baseline", tmp_path / "none.json"], ["none.json", "does not exist"]),
        (["drift", "check", four, "--baseline", baseline, "--db", db, "--time", "2024-05-13",
          "--map-out", map_out], ["lack ['swir1', 'swir2']"]),
        (["drift", "check", paths[3], "--baseline", baseline, "--db", foreign, "--time",
          "2024-05-13", "--map-out", map_out], ["foreign.sqlite", "not an SQLite database"]),
        ([*check, "--baseline", baseline, "--time", "yesterday"], ["not ISO 8601"]),
        ([*check, "--baseline", baseline, "--map-out", tmp_path / "no" / "map.tif"],
         ["does not exist"]),
        ([*check, "--baseline", baseline, "--labels", labels], ["needs a model"]),
        (["drift", "check", crop, "--baseline", baseline, "--db", db, "--time", "2024-05-13",
          "--map-out", map_out], ["crop.tif", "not on the grid"]),
        (["drift", "history", "--db", tmp_path / "nothing.sqlite"], ["does not exist"]),
        (["drift", "history", "--db", foreign], ["not an SQLite database"]),
        (["drift", "baseline", paths[0], "--out", tmp_path / "no" / "b.json"], ["does not exist"]),
        (["drift", "check", truncated, "--baseline", baseline, "--db", db, "--time",
          "2024-05-13"], ["truncated.tif", "could not be decoded"]),
        (["drift", "check", paths[3], "--baseline", baseline, "--db", db, "--time",
          "2024-05-13", "--map-out", paths[3]], ["is the input file"]),
    ]  # fmt: skip
    for argv, fragments in cases:
        code, out, err = run(capsys, *argv)
        assert_one_sentence_error(code, err, *fragments)
        assert out == ""
    assert not map_out.exists() and not db.exists() and foreign.read_text() == "not a database"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["corrupt.json", "foreign.sqlite", "truncated.tif"]


def test_history_piped_into_head_ends_quietly(scenes, baseline, tmp_path):
    """`seamline drift history | head` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    from seamline.core.data.io import open_raster
    from seamline.core.monitor.baseline import Baseline
    from seamline.core.monitor.check import check
    from seamline.core.monitor.history import History

    result = check(open_raster(scenes[0][3]).load(), Baseline.load(baseline))
    db = tmp_path / "history.sqlite"
    with History(db) as history:  # ~23 rows a check: far more than a pipe's 64 KB buffer
        for day in range(1, 200):
            history.add(result, time=f"2024-{1 + day // 28:02d}-{1 + day % 28:02d}", scene="s.tif")
    script = (f"import sys; from seamline.app.cli import main; "
              f"sys.exit(main(['drift', 'history', '--db', {str(db)!r}]))")  # fmt: skip
    cli = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip
    first = cli.stdout.readline()  # what `head -1` reads, then it leaves
    cli.stdout.close()
    err = cli.stderr.read().decode()
    assert cli.wait(timeout=60) == 141 and first.startswith(b"time,")  # 128 + SIGPIPE
    assert err == "", err
