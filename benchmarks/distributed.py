"""Scale-out: a big raster through a dask.distributed LocalCluster vs the in-process path.

Writes a ``SIZE x SIZE x 6`` uint16 GeoTIFF (default 16384: 3.2 GB of pixels) with
``benchmarks/out_of_core.py``'s writer, then predicts it twice, each in a fresh process:

- in-process: ``seamline.predict_file`` (one tile grid streamed from disk, all cores' threads);
- distributed: ``seamline.predict_file_distributed`` on a ``LocalCluster`` of ``--workers``
  single-threaded worker processes (one task per band of tile rows ``--chunk`` pixels tall,
  on the same grid), the client writing the GeoTIFF in band order as bands arrive.

It prints the time of each, the peak RSS of the in-process run, of the client and of every
worker, and compares the two class rasters pixel by pixel (crop mode: they must be equal).
Not a test: it takes minutes. Usage:
``python benchmarks/distributed.py [--size 16384] [--workers 2] [--chunk 2048]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# This file's own folder is sys.path[0]: here `import distributed` would find this file, so
# the cluster runs in child processes started from the repository root.

from out_of_core import write_big_raster  # noqa: E402

IN_PROCESS = """
import json, sys
from seamline.core.hardware import peak_rss_bytes
from seamline.core.predict.file import predict_file
src, out, tiling = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = predict_file(src, out, model="demo", batch_size=1, **tiling)
print(json.dumps({**report, "peak_rss_bytes": peak_rss_bytes()}))
"""

DISTRIBUTED = """
import json, sys
from seamline.core.predict.distributed import connect, predict_file_distributed
from seamline.core.hardware import peak_rss_bytes
src, out, tiling = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
workers, chunk = int(sys.argv[4]), int(sys.argv[5])
with connect("local", n_workers=workers) as client:
    report = predict_file_distributed(src, out, model="demo", scheduler=client,
                                      block_size=chunk, batch_size=1, **tiling)
    peaks = client.run(peak_rss_bytes)
    threads = client.run(lambda: __import__("torch").get_num_threads())
print(json.dumps({**report, "peak_rss_bytes": peak_rss_bytes(),
                  "worker_peak_rss_bytes": sorted(peaks.values()),
                  "worker_torch_threads": sorted(threads.values())}))
"""


def run_child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path, rows: int = 1024) -> dict:
    """Pixels that differ between two single-band rasters, read in strips of ``rows``."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    differ = 0
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        same_grid = (ra.crs, ra.transform, ra.shape) == (rb.crs, rb.transform, rb.shape)
        for r in range(0, ra.height, rows):
            window = Window(0, r, ra.width, min(rows, ra.height - r))
            differ += int(np.count_nonzero(ra.read(1, window=window) != rb.read(1, window=window)))
        pixels = ra.width * ra.height
    return {"same_grid": same_grid, "pixels": pixels, "differing_pixels": differ,
            "equal": same_grid and differ == 0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from seamline.core.hardware import cpu_info, cpu_label

    tiling = json.dumps({"tile_size": args.tile_size, "overlap": args.overlap, "blend": "crop"})
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = Path(tmp) / "big.tif"
        start = time.perf_counter()
        write_big_raster(src, args.size)
        write_seconds = time.perf_counter() - start
        local = run_child(IN_PROCESS, str(src), str(Path(tmp) / "local.tif"), tiling)
        dist = run_child(DISTRIBUTED, str(src), str(Path(tmp) / "dist.tif"), tiling,
                         str(args.workers), str(args.chunk))  # fmt: skip
        equality = compare(Path(tmp) / "local.tif", Path(tmp) / "dist.tif")
    gb = 1e9
    report = {
        "benchmark": "distributed", "machine": cpu_info(), "cpu": cpu_label(),
        "size": args.size, "input_uint16_gb": args.size**2 * 6 * 2 / gb,
        "logits_float32_gb": args.size**2 * 5 * 4 / gb, "input_write_seconds": write_seconds,
        "tiling": json.loads(tiling), "workers": args.workers, "chunk": args.chunk,
        "in_process": local, "distributed": dist, "equality": equality,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"\n{args.size}^2 x 6 uint16 ({report['input_uint16_gb']:.1f} GB), crop, tile "
          f"{args.tile_size}, overlap {args.overlap}, on {cpu_label()}")
    print(f"{'path':<34}{'seconds':>9}{'Mpx/s':>8}{'tiles':>7}  peak RSS per process (GB)")
    print(f"{'in-process predict_file':<34}{local['seconds']:>9.0f}"
          f"{local['megapixels_per_s']:>8.2f}{local['tiles']:>7}  "
          f"{local['peak_rss_bytes'] / gb:.2f}")
    workers = ", ".join(f"{b / gb:.2f}" for b in dist["worker_peak_rss_bytes"])
    memory = f"client {dist['peak_rss_bytes'] / gb:.2f}; workers {workers}"
    cluster = f"LocalCluster, {args.workers} workers x 1 thread"
    print(f"{cluster:<34}{dist['seconds']:>9.0f}{dist['megapixels_per_s']:>8.2f}"
          f"{dist['tiles']:>7}  {memory}  ({dist['bands']} bands; one grid: "
          f"{dist['grid_tiles']} tiles)")
    print(f"equal (crop): {equality['equal']} ({equality['differing_pixels']} of "
          f"{equality['pixels']} pixels differ)")


if __name__ == "__main__":
    main()
