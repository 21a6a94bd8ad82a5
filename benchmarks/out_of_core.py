"""Out-of-core prediction: one tile grid streamed, against the in-memory path and the peers.

Writes ``S x S x 6`` uint16 tiled GeoTIFFs from synthetic scenes, then, each in a fresh
process and in the same run (demo U-Net, FP32, tile 512, overlap 64, batch 1, 2 threads):

1. at ``--size`` (default 4096): ``seamline predict`` (the tile-row stream) against the
   in-memory ``predict_scene`` on the loaded raster, the seed recipe and MONAI's
   ``sliding_window_inference`` (Gaussian), each reading the raster, normalising, predicting
   and writing a class GeoTIFF; the tiles each ran, against one grid's count and against the
   1024 px blocks with halos the file path ran before the stream; class agreement with ours;
2. at ``--also`` sizes (default 8192 and 20000): ``seamline predict`` alone, its wall time
   and peak RSS (flat in the raster's height: set by a tile row).

Prints JSON, then a short table with the CPU capability. Not a test: it takes minutes.
Usage: ``python benchmarks/out_of_core.py [--size 4096] [--also 8192 20000]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

CHILD = (  # `python -c CHILD ARGS`: the `seamline ARGS` console script, then its usage
    "import json, os, sys; from seamline.app.cli import main; "  # main(): reads sys.argv[1:]
    "from seamline.core.hardware import peak_rss_bytes; code = main(); t = os.times(); "
    "print(json.dumps({'peak_rss_bytes': peak_rss_bytes(), 'cpu_s': t.user + t.system}), "
    "file=sys.stderr); sys.exit(code)"
)


class Usage(NamedTuple):
    """What a CLI child used: its peak RSS and the CPU seconds of all its threads."""

    peak_rss_bytes: int
    cpu_s: float


def run_cli(argv: list[str], *, env: dict | None = None, cwd: Path | None = None,
            check: bool = False) -> tuple[subprocess.CompletedProcess, Usage]:  # fmt: skip
    """``seamline ARGS`` as the console script runs it, in a fresh process: its result and
    its :class:`Usage`, as the process saw it (``os.wait4``'s peak RSS includes the parent's
    memory, shared until the child's ``exec``)."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, check=check)  # fmt: skip
    *rest, last = done.stderr.rstrip("\n").split("\n")
    usage = Usage(**json.loads(last)) if last.startswith('{"peak_rss') else Usage(0, 0.0)
    done.stderr = "\n".join(rest)
    return done, usage


PEER = Path(__file__).with_name("out_of_core_peer.py")  # one in-memory run, by name
TILING = ["--tile-size", "512", "--overlap", "64", "--blend", "cosine", "--precision", "fp32"]


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


def streamed(src: Path, out: Path) -> dict:
    """``seamline predict`` in a fresh process: its report, wall seconds and peak RSS."""
    start = time.perf_counter()
    proc, usage = run_cli(["predict", str(src), str(out), *TILING], check=True)
    report = json.loads(proc.stdout)
    return {"wall_s": time.perf_counter() - start, "predict_s": report["seconds"],
            "tiles": report["tiles"], "grid_tiles": report["grid_tiles"],
            "tile_ms_p50": report["tile_ms_p50"],
            "peak_rss_mb": usage.peak_rss_bytes / 2**20}  # fmt: skip


def in_memory(name: str, src: Path, out: Path) -> dict:
    """One in-memory run of ``benchmarks/out_of_core_peer.py`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(PEER), name, str(src), str(out)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout) | {"wall_s": time.perf_counter() - start}


def block_tiles(size: int, block: int = 1024) -> int:
    """Tiles the file path ran before the stream: blocks of ``block`` with halos, each
    tiled on its own."""
    from seamline.core.models.modelio import load_model
    from seamline.core.predict.blocks import BlockGrid
    from seamline.core.predict.tiling import Blend, TileGrid

    model = load_model("demo")
    grid = BlockGrid.for_model(size, size, model, block, tile_size=512, overlap=64)
    return sum(len(TileGrid(*b.read_shape, 512, 64, Blend.COSINE, model.align)) for b in grid)


def agreement(a: Path, b: Path) -> float:
    """Share of pixels whose class ids are equal in two class GeoTIFFs."""
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return float((x.read(1) == y.read(1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--also", type=int, nargs="*", default=[8192, 20000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from seamline.core.hardware import cpu_info, cpu_label

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        src = tmp / f"s{args.size}.tif"
        write_big_raster(src, args.size)
        ours = tmp / "streamed.tif"
        runs[f"streamed {args.size}^2"] = streamed(src, ours) | {"size": args.size}
        for name in ("seamline in-memory", "seed recipe", "MONAI sliding window"):
            out = tmp / f"{name.split()[0]}.tif"
            runs[name] = in_memory(name, src, out) | {"size": args.size}
            if "error" not in runs[name]:
                runs[name]["agreement"] = agreement(out, ours)
        src.unlink()
        for size in args.also:
            big = tmp / f"s{size}.tif"
            write_big_raster(big, size)
            runs[f"streamed {size}^2"] = streamed(big, tmp / "big.tif") | {"size": size}
            big.unlink()
    report = {"benchmark": "out_of_core", "machine": cpu_info(), "size": args.size,
              "tiles_blocks_of_1024_before": block_tiles(args.size), "runs": runs}  # fmt: skip
    print(json.dumps(report, indent=2))
    ours = runs[f"streamed {args.size}^2"]
    print(f"\nout-of-core predict, demo U-Net FP32, tile 512 / 64, on {cpu_label()}")
    print(f"tiles at {args.size}^2: streamed {ours['tiles']}, one grid {ours['grid_tiles']}, "
          f"blocks of 1024 with halos (before) {report['tiles_blocks_of_1024_before']}")
    print(f"{'run':<24}{'wall s':>8}{'vs ours':>9}{'RSS MB':>8}{'agrees':>9}")
    for name, r in runs.items():
        if "error" in r:
            print(f"{name:<24} failed: {r['error']}")
            continue
        agrees = f"{r['agreement']:.2%}" if "agreement" in r else "-"
        ratio = f"{r['wall_s'] / ours['wall_s']:.2f}x" if r["size"] == args.size else "-"
        print(f"{name:<24}{r['wall_s']:>8.1f}{ratio:>9}{r['peak_rss_mb']:>8.0f}{agrees:>9}")


if __name__ == "__main__":
    main()
