"""Remote COGs: time and bytes fetched for an AOI of a SIZE^2 x 6 COG over HTTP vs the whole
file (issue #21).

Writes a SIZE^2 x 6 uint16 COG (512 px blocks, deflate; default 8192), serves it from a
local HTTP server that honours Range requests and counts bytes (tests/rangeserver.py, on
127.0.0.1), then measures, in this process, each run on its own URL (no shared cache):
the whole file read over HTTP, the same read from the local file, an AOI (``--aoi`` px
square at the centre) read over HTTP, and ``seamline predict`` of that AOI (FP32, tile 512 /
64) over HTTP and from the local file. Prints JSON, then a short table. Not a test: it takes
a minute or two. Usage: ``python benchmarks/remote.py [--size 8192] [--aoi 1024]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from out_of_core import write_big_raster  # noqa: E402


def measure(server, run) -> dict:
    """Seconds and bytes served of ``run()`` (each run reads its own URL: no shared cache)."""
    before, start = server.bytes_sent, time.perf_counter()
    run()
    return {"seconds": time.perf_counter() - start, "bytes": server.bytes_sent - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--aoi", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import geopandas as gpd
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window
    from shapely.geometry import box

    from seamline.core.data.remote import remote_raster
    from seamline.core.hardware import cpu_label
    from seamline.core.predict.file import predict_file
    from tests.rangeserver import serving

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        write_big_raster(tmp / "plain.tif", args.size)
        rasterio.shutil.copy(tmp / "plain.tif", tmp / "scene.tif", driver="COG",
                             compress="deflate", blocksize=512)  # fmt: skip
        (tmp / "plain.tif").unlink()
        size_bytes = (tmp / "scene.tif").stat().st_size
        lo = (args.size - args.aoi) // 2
        window = Window(lo, lo, args.aoi, args.aoi)
        with rasterio.open(tmp / "scene.tif") as ds:
            bounds = rasterio.windows.bounds(window, ds.transform)
            aoi = gpd.GeoDataFrame(geometry=[box(*bounds)], crs=ds.crs)
        with serving(tmp) as server:
            url = remote_raster(server.url("scene.tif"))  # GDAL set up for range reads

            def read(source, win=None):
                with rasterio.open(source) as ds:
                    return ds.read(window=win)

            runs = {
                "whole file, local": measure(server, lambda: read(tmp / "scene.tif")),
                "whole file, HTTP": measure(server, lambda: read(f"{url}?whole")),
                "AOI window, HTTP": measure(server, lambda: read(f"{url}?window", window)),
                "predict AOI, local": measure(server, lambda: predict_file(
                    tmp / "scene.tif", tmp / "a.tif", model="demo", aoi=aoi, tile_size=512,
                    overlap=64)),
                "predict AOI, HTTP": measure(server, lambda: predict_file(
                    f"{url}?predict", tmp / "b.tif", model="demo", aoi=aoi, tile_size=512,
                    overlap=64)),
            }  # fmt: skip
            with rasterio.open(tmp / "a.tif") as a, rasterio.open(tmp / "b.tif") as b:
                equal = bool((a.read() == b.read()).all())
    report = {"cpu": cpu_label(), "size": args.size, "aoi": args.aoi, "file_bytes": size_bytes,
              "runs": runs, "aoi_prediction_equal": equal}  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"\n{args.size}^2 x 6 uint16 COG ({size_bytes / 1e6:.0f} MB), AOI {args.aoi}^2 px at "
          f"the centre, served on 127.0.0.1; {cpu_label()}")
    print(f"{'run':<22}{'seconds':>9}{'MB fetched':>12}{'% of file':>11}")
    for label, r in runs.items():
        print(f"{label:<22}{r['seconds']:>9.2f}{r['bytes'] / 1e6:>12.1f}"
              f"{100 * r['bytes'] / size_bytes:>10.1f}%")
    print(f"AOI prediction over HTTP equals the local file's: {equal}")


if __name__ == "__main__":
    main()
