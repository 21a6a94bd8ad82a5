"""Who may call the service and how big an input may be: token auth, --insecure, and the
decompression bomb refused by the service, the CLI and the dashboard (issue #10)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from seamline.app.cli import EXIT_USER_ERROR, main
from seamline.app.serve_cli import TOKEN_ENV, is_loopback
from seamline.app.service import create_app
from seamline.components.scene_picker import ScenePicker
from seamline.core.data.io import geotiff_bytes, read_geotiff_bytes
from seamline.core.data.limits import InputBudget
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InvalidArgumentError, SizeLimitError
from seamline.core.prepare.scene import prepare_file
from tests.conftest import ROOT, peak_memory, write_bomb, write_tif

TOKEN = "s3cret-token-0123456789abcdef"
TIFF = {"content-type": "image/tiff"}
TILING = {"tile_size": 64, "overlap": 16}


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app("demo", precision="fp32", token=TOKEN, **TILING)) as c:
        yield c


@pytest.fixture(scope="module")
def scene_bytes():
    return geotiff_bytes(make_scene(64, 64, seed=3)[0])


@pytest.mark.parametrize("path", ["/metrics", "/predict", "/docs", "/nowhere"])
@pytest.mark.parametrize("headers", [{}, bearer("wrong-token-0123456789"), {"authorization": TOKEN},
                                     {"authorization": f"Basic {TOKEN}"}])  # fmt: skip
def test_without_the_right_token_every_path_but_health_is_a_401(client, path, headers):
    r = client.request("POST" if path == "/predict" else "GET", path, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert "Authorization: Bearer <token>" in error and TOKEN not in r.text
    assert ("not valid" in error) == ("authorization" in headers)


def test_the_right_token_is_let_in_and_health_stays_open_without_showing_it(client, scene_bytes):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["auth"] == "bearer"
    assert TOKEN not in health.text
    r = client.post("/predict", content=scene_bytes, headers={**TIFF, **bearer(TOKEN)})
    assert r.status_code == 200 and read_geotiff_bytes(r.content).shape == (1, 64, 64)
    metrics = client.get("/metrics", headers=bearer(TOKEN))
    assert metrics.status_code == 200 and metrics.json()["requests"]["200"] >= 1
    assert metrics.json()["requests"]["401"] >= 1  # refused requests are counted


def test_401_comes_before_the_body_or_the_parameters_are_looked_at(client):
    r = client.post("/predict", params={"tile_size": "abc"}, content=b"\0" * (65 * 2**20),
                    headers=TIFF)  # fmt: skip
    assert r.status_code == 401


def test_bomb_upload_is_a_413_and_memory_does_not_move(client, tmp_path):
    data = write_bomb(tmp_path / "bomb.tif").read_bytes()
    client.post("/predict", content=data, headers={**TIFF, **bearer(TOKEN)})  # warm the path
    with peak_memory() as figures:
        r = client.post("/predict", content=data, headers={**TIFF, **bearer(TOKEN)})
    print(f"service: bomb ({len(data)} bytes) refused in {figures['seconds'] * 1000:.0f} ms, "
          f"peak RSS {figures['peak_growth'] / 2**20:+.1f} MB")  # fmt: skip
    assert r.status_code == 413 and "60000 x 60000 pixels" in r.json()["error"]
    assert figures["peak_growth"] < 50 * 2**20, figures
    assert client.get("/health").status_code == 200


def test_bomb_is_refused_by_prepare_and_predict_from_the_header(tmp_path, capsys):
    bomb = write_bomb(tmp_path / "bomb.tif")
    huge_tiles = write_bomb(tmp_path / "huge_tiles.tif", block=16384)
    for argv, phrase in (
        (["prepare", str(bomb), str(tmp_path / "out.tif")], "60000 x 60000 pixels"),
        (["predict", str(huge_tiles), str(tmp_path / "out.tif")], "16384 x 16384 pixels"),
    ):
        with peak_memory() as figures:
            code = main(argv)
        err = capsys.readouterr().err
        with capsys.disabled():
            print(f"{argv[0]}: refused in {figures['seconds'] * 1000:.0f} ms, "
                  f"peak RSS {figures['peak_growth'] / 2**20:+.1f} MB")  # fmt: skip
        assert code == EXIT_USER_ERROR and phrase in err and "--no-input-limits" in err
        assert "Traceback" not in err and not (tmp_path / "out.tif").exists()
        assert figures["peak_growth"] < 50 * 2**20, figures


def test_no_input_limits_lifts_the_budget_for_batch_jobs(tmp_path, small_tif):
    with pytest.raises(SizeLimitError, match="more than the 100 values"):
        prepare_file(small_tif, tmp_path / "a.tif", budget=InputBudget(max_pixels=100))
    assert main(["prepare", str(small_tif), str(tmp_path / "b.tif"), "--no-input-limits"]) == 0
    assert (tmp_path / "b.tif").exists()


def test_dashboard_upload_of_a_bomb_is_refused_with_the_shared_budget(tmp_path):
    picker = ScenePicker()
    with peak_memory() as figures:
        used = picker.use_upload(write_bomb(tmp_path / "bomb.tif").read_bytes(), "bomb.tif")
    assert not used and "60000 x 60000 pixels" in picker.message
    assert "seamline predict" in picker.message and picker.source != "Upload"
    assert figures["peak_growth"] < 50 * 2**20, figures


def test_dashboard_uploads_that_name_other_files_or_urls_are_refused_unread(tmp_path):
    """A GDAL VRT named like a GeoTIFF, or an OGR VRT named like GeoJSON, would make the
    server read a file outside its data roots (or fetch a URL) for a visitor."""
    secret = tmp_path / "server_only.tif"
    write_tif(secret, np.ones((1, 8, 8), dtype=np.uint8))
    raster_vrt = (
        f'<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1">'
        f"<SimpleSource><SourceFilename>{secret}</SourceFilename><SourceBand>1</SourceBand>"
        f"</SimpleSource></VRTRasterBand></VRTDataset>"
    ).encode()
    table = tmp_path / "server_only.csv"
    table.write_text("id,wkt\n1,POINT (0 0)\n")
    vector_vrt = (
        f'<OGRVRTDataSource><OGRVRTLayer name="t"><SrcDataSource>{table}</SrcDataSource>'
        f"</OGRVRTLayer></OGRVRTDataSource>"
    ).encode()
    picker = ScenePicker()
    before = picker.scene
    assert not picker.use_upload(raster_vrt, "field_survey.tif")
    assert picker.message == "The upload 'field_survey.tif' is not a GeoTIFF: use a GeoTIFF file."
    good = write_tif(tmp_path / "up.tif", np.ones((3, 16, 16), dtype=np.uint16))
    assert not picker.use_upload(good.read_bytes(), "up.tif", vector_vrt, "aoi.geojson")
    assert "'aoi.geojson' is not GeoJSON or a GeoPackage" in picker.message
    assert picker.scene is before and str(tmp_path) not in picker.message


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "example.org"]))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "myhost"])
def test_non_loopback_bind_without_a_token_refuses_to_start(host, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve-api", "--host", host]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"--host {host} can be reached from other machines" in err
    assert "--token-file" in err and "--insecure" in err and err.count("\n") == 1


def test_insecure_or_a_token_lets_a_non_loopback_bind_go_on(tmp_path, capsys, monkeypatch):
    # Both get past the bind check and stop at the (missing) model, before any port opens.
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve-api", "--host", "0.0.0.0", "--insecure", "--model", "no.pt"]) == 2
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["serve-api", "--host", "0.0.0.0", "--model", "no.pt"]) == 2
    assert capsys.readouterr().err.count("does not exist") == 2


@pytest.mark.parametrize("content, mode, phrase", [
    (None, 0o600, "does not exist"),
    ("\n", 0o600, "is empty"),
    ("short", 0o600, "at least 16 printable ASCII"),
    ("two words but long enough", 0o600, "without spaces"),
    (TOKEN, 0o644, "readable by every user of this machine"),
])  # fmt: skip
def test_bad_token_files_are_one_sentence(tmp_path, capsys, content, mode, phrase):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
        path.chmod(mode)
    assert main(["serve-api", "--token-file", str(path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert phrase in err and err.count("\n") == 1 and "Traceback" not in err
    assert content is None or content.strip() == "" or content not in err  # never echoed


def test_serve_api_with_a_token_file_never_logs_the_token(tmp_path, scene_bytes):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(TOKEN_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline", "serve-api", "--port", "0", "--precision", "fp32",
         "--tile-size", "64", "--overlap", "16", "--token-file", str(token_file),
         "--log-level", "debug"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:  # uvicorn logs the port it bound
            lines.append(line)
            if match := re.search(r"http://127\.0\.0\.1:(\d+)", line):
                url = f"http://127.0.0.1:{match.group(1)}"
                break
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/predict", content=scene_bytes, headers=TIFF).status_code == 401
            wrong = http.get("/metrics", headers=bearer("wrong-" + TOKEN))
            assert wrong.status_code == 401
            r = http.post("/predict", content=scene_bytes, headers={**TIFF, **bearer(TOKEN)})
            assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    log = "".join(lines) + rest
    assert proc.returncode == 0 and '"POST /predict HTTP/1.1" 200' in log  # the access log
    assert TOKEN not in log and "authorization" not in log.lower()


def test_serve_api_budget_flags_reach_the_budget():
    from seamline.app.cli import build_parser
    from seamline.app.serve_cli import budget_from_args

    args = build_parser().parse_args(["serve-api", "--max-bands", "16", "--max-pixels", "1000",
                                      "--dtypes", "uint8, uint16"])  # fmt: skip
    budget = budget_from_args(args)
    assert (budget.max_bands, budget.max_pixels) == (16, 1000)
    assert budget.dtypes == frozenset({"uint8", "uint16"})
    assert budget_from_args(build_parser().parse_args(["serve-api"])) == InputBudget()
    with pytest.raises(InvalidArgumentError, match="max_bands=0"):
        budget_from_args(build_parser().parse_args(["serve-api", "--max-bands", "0"]))


def _dated_folder(folder, days=("2024-01-01", "2024-02-01", "2024-03-01"), side=32):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for day in days:
        data = rng.integers(100, 3000, size=(3, side, side), dtype=np.uint16)
        write_tif(folder / f"{day}.tif", data, descriptions=("red", "green", "blue"))
    return folder


def test_dashboard_folder_files_are_read_as_uploads_are(tmp_path):
    """The drift section's folder source had no budget and opened any GDAL driver: a bomb
    among the dates cost what its header declared, a VRT named ``.tif`` read a server file."""
    from seamline.components.drift_view import DriftSeries

    root = tmp_path / "root"
    site = _dated_folder(root / "site")
    secret = write_tif(tmp_path / "server_only.tif", np.ones((3, 32, 32), dtype=np.uint16))
    (site / "2024-04-01.tif").write_text(
        f'<VRTDataset rasterXSize="32" rasterYSize="32"><VRTRasterBand dataType="UInt16" '
        f'band="1"><SimpleSource><SourceFilename>{secret}</SourceFilename>'
        f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    state = DriftSeries(source="folder", folder="site", data_roots=[root], baseline_count=2)
    assert state.compute() is False
    assert state.message == "The GeoTIFF '2024-04-01.tif' is not a GeoTIFF: use a GeoTIFF file."
    (site / "2024-04-01.tif").unlink()
    write_bomb(site / "2024-05-01.tif")
    with peak_memory() as figures:
        assert state.compute() is False
    assert "60000 x 60000 pixels" in state.message and "seamline prepare --aoi" in state.message
    assert figures["peak_growth"] < 50 * 2**20, figures


def test_a_folder_series_has_a_file_count_and_a_total_budget(tmp_path):
    from seamline.core.monitor.series import MAX_SERIES_FILES, SERIES_SCENES, folder_series

    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for day in range(MAX_SERIES_FILES + 1):  # empty files: refused before any is opened
        (crowded / f"d{day:04d}.tif").touch()
    with pytest.raises(SizeLimitError, match=f"holds {MAX_SERIES_FILES + 1} GeoTIFFs"):
        folder_series(crowded, roots=[tmp_path])
    # Each date (3 x 32 x 32 uint16) fills the budget; the series may hold SERIES_SCENES
    # budgets of float32 values, so 2 x SERIES_SCENES uint16 dates and no more.
    budget = InputBudget(max_pixels=3 * 32 * 32)
    days = [f"2024-01-{d:02d}" for d in range(1, 2 * SERIES_SCENES + 2)]
    site = _dated_folder(tmp_path / "site", days=days)
    with pytest.raises(SizeLimitError, match=f"up to '{days[-1]}.tif' .* a series may hold"):
        folder_series(site, budget=budget)
    (site / f"{days[-1]}.tif").unlink()
    assert len(folder_series(site, budget=budget)) == 2 * SERIES_SCENES
