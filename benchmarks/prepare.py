"""Benchmark the prepare stage on a large synthetic GeoTIFF with an AOI.

A 10000 x 10000 x 4 uint16 GeoTIFF (800 MB) is written block by block, then prepared
(AOI in EPSG:4326 -> raster CRS, crop, mask, baseline z-score normalisation to float32) by

- ``seamline``: ``seamline.core.prepare.scene.prepare`` with baseline band statistics;
- ``seed``: the seed recipe, ``gdf.to_crs(src.crs)`` + ``rasterio.mask.mask(crop=True)``,
  then the same normalisation written in plain numpy.

Each runs in a fresh child process so that its peak RSS is its own. Prints one JSON object
and a short table: seconds, megapixels/s, peak RSS and peak RSS as a multiple of the output
array. Usage: ``python benchmarks/prepare.py [--size 10000] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BANDS = ("blue", "green", "red", "nir")


def make_inputs(workdir: Path, size: int) -> tuple[Path, Path, Path]:
    """Write the big GeoTIFF (in 1000-row blocks), a 4326 AOI and baseline statistics."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import Polygon

    from seamline.core.prepare.bandstats import BandStats

    tif, aoi_path, stats_path = workdir / "big.tif", workdir / "aoi.geojson", workdir / "stats.json"
    transform = from_origin(300000, 5100000, 10, 10)
    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=len(BANDS),
        dtype="uint16",
        crs="EPSG:32633",
        transform=transform,
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    with rasterio.open(tif, "w", **profile) as dst:
        x = np.arange(size, dtype=np.float32)
        for row0 in range(0, size, 1000):
            y = np.arange(row0, min(size, row0 + 1000), dtype=np.float32)[:, None]
            field = 1500 + 800 * np.sin(x / 700) * np.cos(y / 900)
            block = np.stack([field * (1 + 0.2 * b) for b in range(len(BANDS))])
            block += rng.normal(0, 50, size=block.shape).astype(np.float32)
            dst.write(
                block.astype(np.uint16),
                window=rasterio.windows.Window(0, row0, size, block.shape[1]),
            )
        dst.descriptions = BANDS
    x0, y1 = transform.c, transform.f
    extent = size * 10
    ring = [
        (x0 + 0.05 * extent, y1 - 0.1 * extent),
        (x0 + 0.95 * extent, y1 - 0.05 * extent),
        (x0 + 0.9 * extent, y1 - 0.95 * extent),
        (x0 + 0.1 * extent, y1 - 0.9 * extent),
    ]
    gpd.GeoDataFrame(geometry=[Polygon(ring)], crs="EPSG:32633").to_crs("EPSG:4326").to_file(
        aoi_path, driver="GeoJSON"
    )
    BandStats(
        bands=BANDS,
        mean=(1500.0, 1800.0, 2100.0, 2400.0),
        std=(600.0, 700.0, 800.0, 900.0),
        p02=(100.0,) * 4,
        p98=(4000.0,) * 4,
        count=1,
    ).save(stats_path)
    return tif, aoi_path, stats_path


def run_child(method: str, tif: str, aoi: str, stats: str) -> dict:
    """Prepare once with ``method``; report seconds, output size and this process's peak RSS."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import rasterio.mask

    from seamline.core.data.io import open_raster
    from seamline.core.hardware import peak_rss_bytes
    from seamline.core.prepare.bandstats import BandStats
    from seamline.core.prepare.scene import prepare

    baseline_rss = peak_rss_bytes()  # after imports: the rest is the work's own memory
    start = time.perf_counter()
    band_stats = BandStats.load(stats)
    if method == "seamline":
        out = prepare(open_raster(tif), aoi=gpd.read_file(aoi), stats=band_stats).values
    else:
        with rasterio.open(tif) as src:
            shapes = gpd.read_file(aoi).to_crs(src.crs).geometry
            data, _ = rasterio.mask.mask(src, shapes, crop=True)
        valid = (data != 0).any(axis=0)
        mean = np.asarray(band_stats.mean)[:, None, None]
        std = np.asarray(band_stats.std)[:, None, None]
        out = ((data - mean) / std).astype(np.float32)
        out[:, ~valid] = np.nan
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {
        "seconds": seconds,
        "output_bytes": int(out.nbytes),
        "output_shape": list(out.shape),
        "peak_rss_bytes": peak,
        "import_rss_bytes": baseline_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--child", nargs=4, metavar=("METHOD", "TIF", "AOI", "STATS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child)))
        return

    from seamline.core.hardware import cpu_info, cpu_label

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        inputs = [str(p) for p in make_inputs(Path(tmp), args.size)]
        make_seconds = time.perf_counter() - t0
        results = {}
        for method in ("seamline", "seed"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", method, *inputs],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["megapixels_per_s"] = args.size**2 / 1e6 / r["seconds"]
            r["peak_rss_x_output"] = r["peak_rss_bytes"] / r["output_bytes"]
            r["work_rss_x_output"] = (r["peak_rss_bytes"] - r["import_rss_bytes"]) / r[
                "output_bytes"
            ]
            results[method] = r
    report = {
        "benchmark": "prepare",
        "input": f"{args.size} x {args.size} x {len(BANDS)} uint16 GeoTIFF, AOI in EPSG:4326",
        "machine": cpu_info(),
        "input_write_seconds": make_seconds,
        "results": results,
        "speedup_vs_seed": results["seed"]["seconds"] / results["seamline"]["seconds"],
        "rss_ratio_vs_seed": results["seamline"]["peak_rss_bytes"]
        / results["seed"]["peak_rss_bytes"],
    }
    print(json.dumps(report, indent=2))
    print(f"\nprepare, {report['input']} on {cpu_label()}")
    print(
        f"{'method':<10}{'seconds':>9}{'Mpx/s':>9}{'peak RSS GB':>13}{'x output':>10}"
        f"{'x output (excl. imports)':>26}"
    )
    for method, r in results.items():
        print(
            f"{method:<10}{r['seconds']:>9.2f}{r['megapixels_per_s']:>9.1f}"
            f"{r['peak_rss_bytes'] / 1e9:>13.2f}{r['peak_rss_x_output']:>10.2f}"
            f"{r['work_rss_x_output']:>26.2f}"
        )


if __name__ == "__main__":
    main()
