"""Out-of-core prediction: `seamline predict` on a raster far larger than its memory use.

Writes a ``SIZE x SIZE x 6`` uint16 GeoTIFF (default 20000: 4.8 GB of pixels) block by
block from synthetic scenes, then runs ``seamline predict`` on it in a fresh process and
prints that process's peak RSS next to the raster's in-memory size (as uint16 input and as
the float32 logits a whole-raster run would hold). Aim: peak RSS under 1.5 GB.
Not a test: it takes minutes. Usage: ``python benchmarks/out_of_core.py [--size 20000]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = (  # `python -c CHILD ARGS`: `seamline ARGS`, then its peak RSS as JSON on stderr
    "import json, sys; from seamline.app.cli import main; "
    "from seamline.core.hardware import peak_rss_bytes; "
    "code = main(sys.argv[1:]); print(json.dumps({'peak_rss_bytes': peak_rss_bytes()}), "
    "file=sys.stderr); sys.exit(code)"
)


def write_big_raster(path: Path, size: int, block: int = 2048) -> None:
    """Tile synthetic 2048^2 scenes (a few seeds, reused) into one big tiled GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from seamline.core.demo.synthetic import BANDS, make_scene

    scenes = [make_scene(block, block, seed=s)[0].values for s in range(4)]
    profile = dict(driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16",
                   crs="EPSG:32633", transform=from_origin(300000, 5200000, 10, 10),
                   nodata=0, tiled=True, blockxsize=512, blockysize=512, BIGTIFF="YES")
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = BANDS
        for i, r in enumerate(range(0, size, block)):
            for j, c in enumerate(range(0, size, block)):
                h, w = min(block, size - r), min(block, size - c)
                dst.write(scenes[(i + j) % 4][:, :h, :w], window=Window(c, r, w, h))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    args = parser.parse_args()

    from seamline.core.hardware import cpu_info, cpu_label

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src, out = Path(tmp) / "big.tif", Path(tmp) / "classes.tif"
        start = time.perf_counter()
        write_big_raster(src, args.size)
        write_seconds = time.perf_counter() - start
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, "predict", str(src), str(out), "--tile-size",
             str(args.tile_size), "--overlap", str(args.overlap), "--blend", "cosine"],
            capture_output=True, text=True, check=True,
        )
        predict = json.loads(proc.stdout)
        peak = json.loads(proc.stderr.strip().splitlines()[-1])["peak_rss_bytes"]
        output_bytes = out.stat().st_size
    pixels = args.size**2
    report = {
        "benchmark": "out_of_core", "machine": cpu_info(), "size": args.size,
        "input_uint16_gb": pixels * 6 * 2 / 1e9, "logits_float32_gb": pixels * 5 * 4 / 1e9,
        "input_write_seconds": write_seconds, "predict": predict,
        "peak_rss_gb": peak / 1e9, "output_file_mb": output_bytes / 1e6,
        "meets_aim_1_5_gb": peak < 1.5e9,
    }
    print(json.dumps(report, indent=2))
    print(f"\nout-of-core predict, {args.size}^2 x 6 uint16 on {cpu_label()}")
    print(f"input in memory would be {report['input_uint16_gb']:.1f} GB (uint16), logits "
          f"{report['logits_float32_gb']:.1f} GB; peak RSS {report['peak_rss_gb']:.2f} GB; "
          f"{predict['seconds']:.0f} s, {predict['megapixels_per_s']:.2f} Mpx/s, tile p50 "
          f"{predict['tile_ms_p50']:.0f} ms, p95 {predict['tile_ms_p95']:.0f} ms")


if __name__ == "__main__":
    main()
