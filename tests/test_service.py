"""The prediction service on loopback under a real HTTP client (httpx), and serve-api."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from seamline.app.cli import EXIT_USER_ERROR, main
from seamline.app.service import INTERNAL_ERROR, LATENCY_HEADER, create_app
from seamline.core.data.io import geotiff_bytes, read_geotiff_bytes
from seamline.core.data.limits import InputBudget
from seamline.core.demo.synthetic import make_scene
from seamline.core.models.modelio import load_model
from seamline.core.predict.blocks import CLASS_NODATA
from seamline.core.predict.scene import predict_scene

TILING = {"tile_size": 64, "overlap": 16}
TIFF = {"content-type": "image/tiff"}
ROOT = Path(__file__).resolve().parents[1]


class Probe(torch.nn.Module):
    """Wraps a module; records how many forwards ever ran at once (and can start failing)."""

    def __init__(self, module: torch.nn.Module, *, fail_after: int | None = None):
        super().__init__()
        self.module, self.align = module, module.align
        self.fail_after, self.calls, self.active, self.peak = fail_after, 0, 0, 0
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if self.fail_after is not None and self.calls > self.fail_after:
                raise RuntimeError("secret detail from /srv/internal/path")
            return self.module(x)
        finally:
            with self.lock:
                self.active -= 1


@contextmanager
def serving(app):
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; stop it after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def probe():
    demo = load_model("demo")
    return replace(demo, module=Probe(demo.module), name="demo-probe")


@pytest.fixture(scope="module")
def scenes():
    """Eight small scenes of different sizes; two with nodata stripes."""
    out = []
    for seed in range(8):
        scene, _ = make_scene(80 + 8 * seed, 96, seed=seed)
        if seed % 4 == 0:
            scene[:, :10, :] = 0
        out.append(scene)
    return out


@pytest.fixture(scope="module")
def service(probe):
    budget = InputBudget(max_bytes=300_000, max_pixels=256 * 256 * 6)
    app = create_app(probe, precision="fp32", budget=budget, **TILING)
    with serving(app) as url:
        yield url


def test_64_requests_from_8_clients_match_in_process_and_memory_stays_flat(
    service, probe, scenes
):
    expected = [predict_scene(probe, s, **TILING).values for s in scenes]
    bodies = [geotiff_bytes(s) for s in scenes]

    def client_run(worker: int, rounds: int) -> list[tuple[int, int, bytes, dict]]:
        with httpx.Client(base_url=service, timeout=60) as client:
            results = []
            for k in range(rounds):
                i = (worker + k) % len(bodies)
                r = client.post("/predict", content=bodies[i], headers=TIFF)
                results.append((i, r.status_code, r.content, dict(r.headers)))
            return results

    def burst(rounds: int) -> list:
        with ThreadPoolExecutor(8) as pool:
            return [x for part in pool.map(client_run, range(8), [rounds] * 8) for x in part]

    burst(2)  # warm-up: allocator pools, HTTP machinery
    before = rss_bytes()
    results = burst(8)
    growth = rss_bytes() - before
    print(f"RSS {before / 2**20:.0f} MB after warm-up, grew {growth / 2**20:+.1f} MB")
    assert len(results) == 64
    for i, status, content, headers in results:
        assert status == 200 and headers["content-type"] == "image/tiff"
        assert float(headers[LATENCY_HEADER.lower()]) > 0
        out = read_geotiff_bytes(content)
        assert out.rio.crs == scenes[i].rio.crs
        assert out.rio.transform() == scenes[i].rio.transform()
        assert out.rio.nodata == CLASS_NODATA
        np.testing.assert_array_equal(out.values[0], expected[i])
    assert probe.module.peak == 1  # queued, never two forwards at once
    assert growth < 50 * 2**20, f"RSS grew by {growth / 2**20:.0f} MB over 64 requests"
    metrics = httpx.get(f"{service}/metrics").json()
    assert metrics["requests"]["200"] >= 80 and metrics["queued"] == 0
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"]


def _three_bands(scene):
    names = ("blue", "green", "red")
    return geotiff_bytes(scene.sel(band=list(names)).assign_attrs(long_name=names))


def _no_crs(scene):
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=6, width=32, height=32, dtype="uint16") as dst:
            dst.write(scene.values[:, :32, :32])
        return mem.read()


BAD = {
    "garbage": (lambda s: b"not a tiff" * 50, {}, TIFF, 422, "not a GeoTIFF"),
    "empty": (lambda s: b"", {}, TIFF, 422, "empty"),
    "oversized": (lambda s: b"\0" * 400_000, {}, TIFF, 413, "larger than the 300000 bytes"),
    "oversized stream": (lambda s: (b"\0" * 50_000 for _ in range(8)), {}, TIFF, 413,
                         "larger than"),
    "too many pixels": (lambda s: geotiff_bytes(make_scene(300, 300, seed=1)[0] * 0 + 900), {},
                        TIFF, 413, "more than the 393,216"),  # compresses to a few kB
    "wrong media type": (geotiff_bytes, {}, {"content-type": "text/plain"}, 415, "image/tiff"),
    "three bands": (_three_bands, {}, TIFF, 422, "lack ['nir', 'swir1', 'swir2']"),
    "no crs": (_no_crs, {}, TIFF, 422, "no CRS"),
    "tile_size not a number": (geotiff_bytes, {"tile_size": "abc"}, TIFF, 422, "'tile_size'"),
    "tile_size off the stride": (geotiff_bytes, {"tile_size": 66, "overlap": 8}, TIFF, 422,
                                 "multiple"),
    "tile_size too small": (geotiff_bytes, {"tile_size": 8}, TIFF, 422, "'tile_size'"),
    "overlap over half the tile": (geotiff_bytes, {"overlap": 40}, TIFF, 422, "at most half"),
    "tile_size too large": (geotiff_bytes, {"tile_size": 10**6}, TIFF, 422, "'tile_size'"),
    "overlap >= tile": (geotiff_bytes, {"overlap": 64}, TIFF, 422, "overlap must be"),
    "blend typo": (geotiff_bytes, {"blend": "cosin"}, TIFF, 422, "Did you mean 'cosine'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_json_4xx_and_the_service_keeps_serving(service, scenes, case):
    make_body, params, headers, status, phrase = BAD[case]
    with httpx.Client(base_url=service, timeout=60) as client:
        r = client.post("/predict", content=make_body(scenes[1]), params=params,
                        headers=headers)
        assert r.status_code == status
        error = r.json()["error"]
        assert phrase in error and "Traceback" not in error and "\n" not in error
        good = client.post("/predict", content=geotiff_bytes(scenes[1]), headers=TIFF)
        assert good.status_code == 200 and read_geotiff_bytes(good.content).shape == (1, 88, 96)
        counts = client.get("/metrics").json()["requests"]
        assert counts[str(status)] >= 1


def test_health_describes_model_and_limits(service):
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and health["model"] == "demo-probe"
    assert health["precision"] == "fp32" and len(health["bands"]) == 6
    assert health["max_bytes"] == 300_000 and health["defaults"]["tile_size"] == 64
    assert health["max_bands"] == 512  # the default budget's band bound
    missing = httpx.get(f"{service}/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()


def test_internal_error_is_a_500_without_details_and_is_counted(scenes):
    demo = load_model("demo")
    probe = Probe(demo.module)
    app = create_app(replace(demo, module=probe, name="demo-broken"), precision="fp32", **TILING)
    probe.fail_after = probe.calls  # the start-up calls (warm-up, seam probe) went through
    with serving(app) as url:
        r = httpx.post(f"{url}/predict", content=geotiff_bytes(scenes[0]), headers=TIFF)
        assert r.status_code == 500 and r.json() == {"error": INTERNAL_ERROR}
        assert "secret" not in r.text
        assert httpx.get(f"{url}/metrics").json()["requests"] == {"500": 1}


def test_serve_api_cli_serves_and_stops(tmp_path, scenes):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline", "serve-api", "--port", "0", "--precision", "fp32",
         "--tile-size", "64", "--overlap", "16"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = None
        for line in proc.stderr:  # uvicorn logs the port it bound
            if match := re.search(r"http://127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
                break
        assert port, "serve-api did not report its address"
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["precision"] == "fp32" and health["defaults"]["overlap"] == 16
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=geotiff_bytes(scenes[2]),
                       headers=TIFF, timeout=60)
        np.testing.assert_array_equal(read_geotiff_bytes(r.content).values[0],
                                      predict_scene("demo", scenes[2], **TILING).values)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_serve_api_cli_bad_model_is_one_sentence(capsys):
    code = main(["serve-api", "--model", "missing.pt"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "does not exist" in err and "Traceback" not in err


def test_a_client_leaving_mid_upload_is_not_a_server_error(service, scenes):
    """Review: client disconnects counted as 500s in /metrics (and logged as failures)."""
    body = geotiff_bytes(scenes[0])
    host, port = service.removeprefix("http://").split(":")
    before = httpx.get(f"{service}/metrics").json()["requests"]
    with socket.create_connection((host, int(port))) as conn:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        time.sleep(0.2)  # the server is reading the body
    deadline = time.monotonic() + 10
    while (after := httpx.get(f"{service}/metrics").json()["requests"]) == before:
        assert time.monotonic() < deadline, "the abandoned request was never counted"
        time.sleep(0.05)
    assert after.get("499", 0) == before.get("499", 0) + 1
    assert after.get("500", 0) == before.get("500", 0)
    assert httpx.post(f"{service}/predict", content=body, headers=TIFF).status_code == 200


def test_a_requests_tile_size_gets_the_overlap_planned_for_it():
    """The default overlap covers the default 512 px tile (92 px): a request for 128 px tiles
    got a 422 (at most half a tile) where the CLI plans 64 px and warns."""
    demo = load_model("demo")
    scene, _ = make_scene(200, 232, seed=11)
    with serving(create_app(demo, precision="fp32")) as url:
        assert httpx.get(f"{url}/health").json()["defaults"]["overlap"] == 92
        r = httpx.post(f"{url}/predict", params={"tile_size": 128},
                       content=geotiff_bytes(scene), headers=TIFF, timeout=60)  # fmt: skip
        asked = httpx.post(f"{url}/predict", params={"tile_size": 128, "overlap": 92},
                           content=geotiff_bytes(scene), headers=TIFF, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    expected = predict_scene(demo, scene, tile_size=128, overlap=64, device="cpu")
    assert np.array_equal(read_geotiff_bytes(r.content).values[0], expected.values)
    assert asked.status_code == 422  # an overlap the client asks for is checked as before
