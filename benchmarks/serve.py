"""The prediction service under load: request latency and throughput, FP32 vs INT8.

For each precision, ``seamline serve-api`` runs in its own process on 127.0.0.1 (a free
port); this process is the client (httpx, one thread per concurrent client) and POSTs the
same 512 x 512 x 6 synthetic GeoTIFF. After warm-up requests it measures the request
latency seen by the client (p50/p95 over ``--requests`` sequential requests) and the
server's own ``X-Seamline-Latency-Ms``, then the throughput with 1, 4 and 8 concurrent
clients (each sends ``--per-client`` requests), and the server's peak RSS. Client and
server share the machine's cores. Not a test: it never passes or fails on time.
Usage: ``python benchmarks/serve.py [--size 512] [--requests 30] [--per-client 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seamline.core.data.io import geotiff_bytes  # noqa: E402
from seamline.core.demo.synthetic import make_scene  # noqa: E402
from seamline.core.hardware import cpu_info, cpu_label  # noqa: E402

TIFF = {"content-type": "image/tiff"}


def start_server(precision: str, tile_size: int) -> tuple[subprocess.Popen, str, float]:
    """``seamline serve-api`` on a free port; returns the process, its URL, startup seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline", "serve-api", "--port", "0", "--precision", precision,
         "--tile-size", str(tile_size)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    for line in proc.stderr:
        if match := re.search(r"http://127\.0\.0\.1:(\d+)", line):
            break
    else:
        raise RuntimeError(f"serve-api exited with status {proc.wait()}")
    # keep draining the access log so the server never blocks on a full pipe
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, f"http://127.0.0.1:{match.group(1)}", time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def post(client: httpx.Client, body: bytes) -> tuple[float, float, float]:
    """Milliseconds of one request: at the client, at the server, in the model."""
    start = time.perf_counter()
    r = client.post("/predict", content=body, headers=TIFF)
    r.raise_for_status()
    return ((time.perf_counter() - start) * 1000, float(r.headers["x-seamline-latency-ms"]),
            float(r.headers["x-seamline-inference-ms"]))


def percentiles(values: list[float]) -> dict:
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


def throughput(url: str, body: bytes, clients: int, per_client: int, pixels: int) -> dict:
    def run(_: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=600) as client:
            return [post(client, body)[0] for _ in range(per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [ms for part in pool.map(run, range(clients)) for ms in part]
    seconds = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "seconds": seconds,
            "requests_per_s": len(latencies) / seconds,
            "megapixels_per_s": len(latencies) * pixels / 1e6 / seconds,
            "latency_ms": percentiles(latencies)}  # fmt: skip


def bench(precision: str, body: bytes, args: argparse.Namespace) -> dict:
    proc, url, startup = start_server(precision, args.tile_size)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(args.warmup):
                post(client, body)
            timed = [post(client, body) for _ in range(args.requests)]
            health = client.get("/health").json()
        pixels = args.size**2
        loads = [throughput(url, body, c, args.per_client, pixels) for c in (1, 4, 8)]
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "precision": health["precision"], "startup_seconds": startup,
        "latency_ms_client": percentiles([t[0] for t in timed]),
        "latency_ms_server": percentiles([t[1] for t in timed]),
        "latency_ms_inference": percentiles([t[2] for t in timed]),
        "throughput": loads, "server_peak_rss_mb": rss,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--per-client", type=int, default=6)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    args = parser.parse_args()

    scene, _ = make_scene(args.size, args.size, seed=900)  # a held-out seed
    body = geotiff_bytes(scene)
    rows = [bench(p, body, args) for p in args.precisions]
    report = {"benchmark": "serve", "machine": cpu_info(), "cpu": cpu_label(),
              "scene": [6, args.size, args.size], "upload_bytes": len(body),
              "tile_size": args.tile_size, "results": rows}  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"\nserve-api, {args.size} x {args.size} x 6 scene ({len(body) / 1e6:.1f} MB upload),"
          f" tile {args.tile_size}, on {cpu_label()}")
    print(f"{'precision':<10}{'client p50':>11}{'p95':>8}{'server p50':>11}{'p95':>8}"
          f"{'model p50':>10}{'1 client':>10}{'4 clients':>11}{'8 clients':>11}{'RSS MB':>8}")
    for r in rows:
        c, s, m = r["latency_ms_client"], r["latency_ms_server"], r["latency_ms_inference"]
        rates = "".join(f"{t['requests_per_s']:>8.2f}/s " for t in r["throughput"])
        print(f"{r['precision']:<10}{c['p50']:>9.0f}ms{c['p95']:>6.0f}ms{s['p50']:>9.0f}ms"
              f"{s['p95']:>6.0f}ms{m['p50']:>8.0f}ms {rates}{r['server_peak_rss_mb']:>6.0f}")
    print("throughput in requests/s; latency p50/p95 under load is in the JSON")


if __name__ == "__main__":
    main()
