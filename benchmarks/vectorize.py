"""Vector output: `seamline vectorize --window` vs `rasterio.features.shapes` on the whole raster.

Writes a ``SIZE x SIZE`` uint8 class GeoTIFF (default 10000) block by block from the labels of
synthetic scenes (``seamline.core.demo.synthetic.make_scene``: fields, parcels, rivers, built-up),
each block rotated or mirrored so that no two neighbours repeat, with prediction-like noise: ragged
class boundaries (``--jitter``: that share of pixels takes a 4-neighbour's class) and isolated
misclassified pixels (``--speckle``). Then, each in a fresh process whose peak RSS is measured:

- ``seamline vectorize big.tif windowed.gpkg --window 2048``;
- the recipe users write by hand: read the whole raster, ``rasterio.features.shapes`` over it,
  shapely geometries into a GeoDataFrame, ``to_file`` a GeoPackage.

Both GeoPackages are read back and compared: counts and total areas per class, and every
polygon (sorted by class and bounds, compared with ``shapely.equals``). Aim: the same
polygons, and peak RSS of the windowed run at most a third of the whole-raster recipe's.
Not a test: it takes minutes. Usage: ``python benchmarks/vectorize.py [--size 10000]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from out_of_core import run_cli  # a CLI child process and its peak RSS

WHOLE_RASTER_RECIPE = """
import json, sys, time
import geopandas as gpd, rasterio, shapely
from rasterio.features import shapes
from seamline.core.hardware import peak_rss_bytes

src, out = sys.argv[1:]
start = time.perf_counter()
with rasterio.open(src) as ds:
    classes, transform, crs, nodata = ds.read(1), ds.transform, ds.crs, ds.nodata
found = [(shapely.geometry.shape(g), int(v))
         for g, v in shapes(classes, mask=classes != nodata, transform=transform)]
gdf = gpd.GeoDataFrame({"class_id": [v for _, v in found]},
                       geometry=[g for g, _ in found], crs=crs)
del found
gdf["area"] = gdf.area
gdf.to_file(out, driver="GPKG")
print(json.dumps({"seconds": time.perf_counter() - start, "polygons": len(gdf),
                  "peak_rss_bytes": peak_rss_bytes()}))
"""


def write_class_raster(path: Path, size: int, block: int, jitter: float, speckle: float) -> None:
    """Tile the labels of four synthetic scenes (rotated/mirrored, with noise) into a GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from seamline.core.demo.synthetic import CLASSES, LABEL_NODATA, make_scene

    bases = [make_scene(block, block, seed=s)[1].values for s in range(4)]
    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(300000, 5200000, 10, 10),
        nodata=LABEL_NODATA,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(classes=json.dumps(list(CLASSES)))
        for i, r in enumerate(range(0, size, block)):
            for j, c in enumerate(range(0, size, block)):
                labels = np.rot90(bases[(i + 2 * j) % 4], k=(i + j) % 4)
                labels = np.ascontiguousarray(labels[:, ::-1] if (i * j) % 2 else labels)
                step = rng.integers(0, 4, labels.shape)  # which 4-neighbour lends its class
                lend = rng.random(labels.shape) < jitter
                for k, (dy, dx) in enumerate(((1, 0), (-1, 0), (0, 1), (0, -1))):
                    take = lend & (step == k)
                    labels[take] = np.roll(labels, (dy, dx), axis=(0, 1))[take]
                flip = rng.random(labels.shape) < speckle
                labels[flip] = rng.integers(0, len(CLASSES), int(flip.sum()))
                h, w = min(block, size - r), min(block, size - c)
                dst.write(labels[None, :h, :w], window=Window(c, r, w, h))


def sorted_polygons(path: Path):
    """A GeoPackage read back, valid, in a canonical order (class, then bounds)."""
    import geopandas as gpd
    import shapely

    gdf = gpd.read_file(path)
    geoms = shapely.make_valid(gdf.geometry.to_numpy())  # GDAL's own rings may self-touch
    b = shapely.bounds(geoms)
    order = np.lexsort((shapely.area(geoms), b[:, 3], b[:, 2], b[:, 1], b[:, 0], gdf["class_id"]))
    return gdf["class_id"].to_numpy()[order], geoms[order]


def compare(windowed: Path, whole: Path) -> dict:
    """Counts and total areas per class, and polygon-by-polygon equality."""
    import shapely

    ids_a, geoms_a = sorted_polygons(windowed)
    ids_b, geoms_b = sorted_polygons(whole)
    classes = sorted(set(ids_a) | set(ids_b))
    counts = {int(c): [int((ids_a == c).sum()), int((ids_b == c).sum())] for c in classes}
    area_a, area_b = shapely.area(geoms_a), shapely.area(geoms_b)
    areas = {
        int(c): [float(area_a[ids_a == c].sum()), float(area_b[ids_b == c].sum())] for c in classes
    }
    same_rows = len(ids_a) == len(ids_b) and bool((ids_a == ids_b).all())
    equal = int(shapely.equals(geoms_a, geoms_b).sum()) if same_rows else 0
    return {
        "polygons_per_class": counts,
        "area_per_class_m2": areas,
        "counts_equal": all(a == b for a, b in counts.values()),
        "areas_equal": all(np.isclose(a, b, rtol=1e-12) for a, b in areas.values()),
        "geometries_equal": equal,
        "geometries_compared": len(ids_b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--block", type=int, default=2500, help="synthetic label tile side")
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--speckle", type=float, default=0.0002)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from seamline.core.hardware import cpu_info, cpu_label

    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = Path(tmp) / "classes.tif"
        start = time.perf_counter()
        write_class_raster(src, args.size, args.block, args.jitter, args.speckle)
        write_seconds = time.perf_counter() - start
        windowed_out, whole_out = Path(tmp) / "windowed.gpkg", Path(tmp) / "whole.gpkg"
        proc, (windowed_peak, _) = run_cli(
            ["vectorize", str(src), str(windowed_out), "--window", str(args.window)],
            cwd=root,
            check=True,
        )
        windowed = json.loads(proc.stdout)
        proc = subprocess.run(
            [sys.executable, "-c", WHOLE_RASTER_RECIPE, str(src), str(whole_out)],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        whole = json.loads(proc.stdout)
        same = compare(windowed_out, whole_out)
    ratio = windowed_peak / whole["peak_rss_bytes"]
    report = {
        "benchmark": "vectorize",
        "machine": cpu_info(),
        "size": args.size,
        "window": args.window,
        "jitter": args.jitter,
        "speckle": args.speckle,
        "raster_uint8_mb": args.size**2 / 1e6,
        "raster_write_seconds": write_seconds,
        "windowed": {
            "seconds": windowed["seconds"],
            "peak_rss_mb": windowed_peak / 1e6,
            "polygons": windowed["total_polygons"],
        },
        "whole_raster_shapes": {
            "seconds": whole["seconds"],
            "peak_rss_mb": whole["peak_rss_bytes"] / 1e6,
            "polygons": whole["polygons"],
        },
        "same": same,
        "peak_rss_ratio": ratio,
        "meets_aim_one_third": ratio <= 1 / 3,
    }
    print(json.dumps(report, indent=2))
    print(f"\nvectorize {args.size}^2 class raster on {cpu_label()}")
    print(f"{'run':<34}{'seconds':>9}{'peak RSS MB':>13}{'polygons':>10}")
    print(
        f"{'seamline vectorize --window ' + str(args.window):<34}{windowed['seconds']:>9.1f}"
        f"{windowed_peak / 1e6:>13.0f}{windowed['total_polygons']:>10}"
    )
    print(
        f"{'rasterio shapes, whole raster':<34}{whole['seconds']:>9.1f}"
        f"{whole['peak_rss_bytes'] / 1e6:>13.0f}{whole['polygons']:>10}"
    )
    print(
        f"peak RSS ratio {ratio:.2f} (aim <= 0.33); counts equal {same['counts_equal']}, "
        f"areas equal {same['areas_equal']}, geometries equal "
        f"{same['geometries_equal']}/{same['geometries_compared']}"
    )


if __name__ == "__main__":
    main()
