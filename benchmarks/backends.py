"""Backends on this CPU, and what ``--precision auto`` gains end to end (issue #20).

Part 1: every backend (FP32 eager channels-last / compiled, BF16 autocast / compiled where
BF16 is native, INT8 on ONNX Runtime) timed per tile with its GFLOP/s, its share of the peak
this CPU reaches in a large matmul at that precision, its agreement with FP32 and its build
cost, for the demo U-Net and a third-party model (MONAI's BasicUNet, random weights), and
what auto picks. Part 2: ``seamline predict`` on a SIZE^2 x 6 GeoTIFF (tile 512, overlap
64), each in a fresh process, same run: FP32 with a cold cache (its seam probe is measured
and kept) and warm (the baseline), auto with a cold cache, auto warm (twice: the second run
uses the build cost the first one observed), ``--precision int8`` twice, and a saved INT8
``.onnx`` twice (the second is compared); then FP32 and auto on larger rasters (``--also``,
default 8192^2: is memory flat?); wall time, predict's own seconds, the time in the forward
pass and the rest, peak RSS, and the share of pixels whose class equals FP32's (that
size's FP32 map). Prints JSON, then a short table.

The forward pass is the seconds the model's calls ran (predict's ``forward_s``: with calls in
flight together, each call's share), so "rest" is the time no call ran: reading, normalising,
blending and writing that did not overlap a call. "rest at p50" counts the forward as tiles x
the median call instead: on 2 cores the reader and the blending slow the calls they overlap,
and that share counts as rest there.

Not a test: it takes minutes. Usage: ``python benchmarks/backends.py [--size 4096]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from out_of_core import run_cli  # a CLI child process, its peak RSS and CPU seconds


def backend_tables(tile_size: int, *, device: str = "cpu", batch_size: int = 1) -> Iterator[dict]:
    """Part 1: the measured table of each model on ``device`` (measured afresh: no cache),
    one model at a time."""
    import torch
    from monai.networks.nets import BasicUNet

    from seamline.core.demo.synthetic import make_scene
    from seamline.core.models.modelio import load_model
    from seamline.core.optimise.auto import choose_backend
    from seamline.core.optimise.quantize import calibration_tiles

    demo = load_model("demo")
    torch.manual_seed(0)
    monai = load_model(BasicUNet(spatial_dims=2, in_channels=6, out_channels=5).eval(),
                       bands=list(demo.bands))  # fmt: skip
    scene = make_scene(2 * tile_size, 2 * tile_size, seed=100)[0]
    for name, model in (("demo U-Net", demo), ("MONAI BasicUNet", monai)):
        tiles = calibration_tiles(scene, model, tile_size=tile_size, count=4)
        choice = choose_backend(model, tiles, tile_size=tile_size, batch_size=batch_size,
                                device=device, cache=False)  # fmt: skip
        yield {"model": name, **choice.to_dict(), "table": choice.table()}


def run_predict(argv: list[str], env: dict) -> dict:
    """``seamline predict`` in a fresh process: its JSON, wall seconds and peak RSS."""
    start = time.perf_counter()
    done, usage = run_cli(["predict", *argv], env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    report = json.loads(done.stdout)
    forward, seconds = report["forward_s"], report["seconds"]
    at_p50 = report["tiles"] * report["tile_ms_p50"] / 1000
    return {
        "wall_s": wall, "predict_s": seconds, "forward_s": forward,
        "rest_s": seconds - forward, "rest_share": 1 - forward / seconds,
        "forward_p50_s": at_p50, "rest_share_p50": 1 - at_p50 / seconds,
        "tiles": report["tiles"], "peak_rss_mb": usage.peak_rss_bytes / 2**20,
        "cpu_s": usage.cpu_s, "precision": report["precision"],
        "backend": report.get("backend", {}).get("name", report["precision"]),
        "ms_per_tile": report.get("backend", {}).get("ms_per_tile"),
    }  # fmt: skip


def agreement(out: Path, reference: Path) -> float:
    """The share of valid pixels where the class map ``out`` equals FP32's ``reference``
    (1.0 for FP32's own run), read block by block."""
    import rasterio

    same = valid = 0
    with rasterio.open(out) as a, rasterio.open(reference) as b:
        for _, window in a.block_windows(1):
            x, y = a.read(1, window=window), b.read(1, window=window)
            ok = y != b.nodata
            same, valid = same + int((x == y)[ok].sum()), valid + int(ok.sum())
    return same / valid


def end_to_end(size: int, workdir: Path | None, cache: Path) -> dict:
    """Part 2 (see the module docstring); the disk cache in ``cache``."""
    from seamline.core.data.io import write_raster
    from seamline.core.demo.synthetic import make_scene
    from seamline.core.models.modelio import load_model
    from seamline.core.optimise.quantize import quantize, save_quantized

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        scene = write_raster(make_scene(size, size, seed=3)[0], tmp / "scene.tif")
        env = os.environ | {"SEAMLINE_CACHE_DIR": str(cache)}
        onnx = save_quantized(quantize(load_model("demo"), make_scene(1024, 1024, seed=3)[0],
                                       cache=False), tmp / "demo_int8.onnx")  # fmt: skip
        floor = no_forward_model(tmp / "no_forward.onnx")
        tiling = ["--tile-size", "512", "--overlap", "64"]
        runs, reference = {}, tmp / "fp32.tif"
        for label, extra in (  # FP32 twice: its first run fills the seam probe's cache entry
            ("fp32, cold cache", ["--precision", "fp32"]),
            ("fp32", ["--precision", "fp32"]),
            ("auto, cold cache", []),
            ("auto, warm", []),
            ("auto, warm again", []),
            ("int8, first call", ["--precision", "int8"]),
            ("int8, second call", ["--precision", "int8"]),
            ("saved .onnx, first", ["--model", str(onnx)]),  # its seam probe measured
            ("saved int8 .onnx", ["--model", str(onnx)]),
            ("no forward, first", ["--model", str(floor), "--precision", "fp32"]),
            ("no forward", ["--model", str(floor), "--precision", "fp32"]),
        ):
            out = reference if label.startswith("fp32") else tmp / "out.tif"  # the same map
            runs[label] = run_predict([str(scene), str(out), *tiling, *extra], env)
            if not label.startswith("no forward"):  # its classes mean nothing
                runs[label]["agreement"] = agreement(out, reference)
        return runs


def no_forward_model(path: Path) -> Path:
    """The demo model's bands, classes and statistics over a 1x1 convolution, as an FP32
    ``.onnx`` that ONNX Runtime runs as it runs INT8 (calls in flight on threads of their
    own): a job with it costs what every backend pays besides its forward pass (start-up,
    reading, normalising, blending, writing), the floor under auto's figure."""
    import torch

    from seamline.core.models.modelio import load_model

    demo = load_model("demo")
    conv = torch.nn.Conv2d(len(demo.bands), len(demo.classes), 1).eval()
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    program = torch.onnx.export(conv, (torch.zeros(2, len(demo.bands), 64, 64),), dynamo=True,
                                dynamic_shapes=(dims,), input_names=["x"], verbose=False)
    program.save(str(path))
    meta = demo.sidecar() | {"name": "no-forward", "receptive_radius": 0, "align": 1}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def larger_scene(size: int, workdir: Path | None, cache: Path) -> dict:
    """FP32 and auto (cache warm from part 2) on a SIZE^2 raster: is memory flat in size?"""
    from out_of_core import write_big_raster

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scene = Path(tmp) / "big.tif"
        write_big_raster(scene, size)
        env = os.environ | {"SEAMLINE_CACHE_DIR": str(cache)}
        tiling = ["--tile-size", "512", "--overlap", "64"]
        fp32, auto = Path(tmp) / "fp32.tif", Path(tmp) / "auto.tif"
        runs = {f"fp32 {size}^2": run_predict([str(scene), str(fp32), *tiling,
                                               "--precision", "fp32"], env),
                f"auto {size}^2": run_predict([str(scene), str(auto), *tiling], env)}
        runs[f"auto {size}^2"]["agreement"] = agreement(auto, fp32)
        return runs  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-tables", action="store_true")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--also", type=int, nargs="*", default=[8192],
                        help="larger rasters for FP32 vs auto and peak RSS (default 8192)")
    args = parser.parse_args()

    from seamline.core.hardware import cpu_label

    tables = [] if args.skip_tables else list(backend_tables(args.tile_size))
    with tempfile.TemporaryDirectory(dir=args.workdir) as cache:
        runs = {} if args.skip_predict else end_to_end(args.size, args.workdir, Path(cache))
        for size in args.also if runs else ():
            runs |= larger_scene(size, args.workdir, Path(cache))
    print(json.dumps({"cpu": cpu_label(), "tables": tables, "predict": runs,
                      "ceiling": ceiling(runs), "size": args.size}, indent=2))  # fmt: skip
    print(f"\nCPU: {cpu_label()}")
    print_tables(tables)
    if runs:
        print(f"\nseamline predict {args.size}^2 x 6 (and --also), tile 512, overlap 64 "
              "(fresh processes)")
        print_runs(runs)


def print_tables(tables: list[dict]) -> None:
    """Part 1 as a short table per model."""
    for table in tables:
        print(f"\n{table['model']}: tile {table['tile_size']}, {table['gflop_per_tile']:.1f} "
              f"GFLOP/tile; auto per tile: {table['reason']}")
        print(f"{'backend':<14}{'ms/tile':>9}{'vs FP32':>9}{'GFLOP/s':>9}{'% peak':>8}"
              f"{'agrees':>9}{'build s':>9}{'warm s':>8}")
        for r in table["table"]:
            peak = f"{r['percent_of_peak']:.0f}" if r["percent_of_peak"] is not None else "-"
            print(f"{r['backend']:<14}{r['ms_per_tile']:>9.2f}{r['speedup']:>8.1f}x"
                  f"{r['gflops']:>9.0f}{peak:>8}{r['agreement']:>9.2%}{r['build_s']:>9.1f}"
                  f"{r['warm_build_s']:>8.1f}")


def print_runs(runs: dict) -> None:
    """Part 2 as a short table, each run against the one labelled ``fp32``."""
    fp32 = runs["fp32"]["wall_s"]
    print(f"{'run':<20}{'backend':<14}{'wall s':>8}{'vs FP32':>9}{'predict s':>10}"
          f"{'forward s':>10}{'rest %':>8}{'at p50':>8}{'CPU s':>7}{'RSS MB':>8}{'agrees':>9}")
    for label, r in runs.items():
        agrees = f"{r['agreement']:.2%}" if "agreement" in r else "-"
        print(f"{label:<20}{r['backend']:<14}{r['wall_s']:>8.1f}{fp32 / r['wall_s']:>8.2f}x"
              f"{r['predict_s']:>10.1f}{r['forward_s']:>10.1f}{100 * r['rest_share']:>7.0f}%"
              f"{100 * r['rest_share_p50']:>7.0f}%{r['cpu_s']:>7.1f}{r['peak_rss_mb']:>8.0f}"
              f"{agrees:>9}")
    if (bound := ceiling(runs)) is not None:
        print(f"\nWhat bounds auto here: {bound['text']}")


def ceiling(runs: dict) -> dict | None:
    """The fastest auto's backend could run this job on this machine, from this run's
    figures: the job without a forward pass (start-up, reading, normalising, blending,
    writing: "no forward") plus the backend's forward at the rate auto measured for it
    (calls in flight together), with every core busy for both; the most it could gain over
    FP32. None without those runs."""
    auto, floor = runs.get("auto, warm again"), runs.get("no forward")
    if not (auto and floor and auto["ms_per_tile"]):
        return None
    cores = os.cpu_count() or 1
    outside = floor["wall_s"] - floor["predict_s"]  # start-up and exit: one thread
    forward = auto["tiles"] * auto["ms_per_tile"] / 1000  # every core, calls in flight
    rest_cpu = floor["cpu_s"] - outside  # the no-forward job's CPU seconds in predict
    bound = outside + forward + rest_cpu / cores
    most = runs["fp32"]["wall_s"] / bound
    text = (f"{outside:.1f} s outside predict + {auto['tiles']} tiles x "
            f"{auto['ms_per_tile']:.1f} ms ({auto['backend']}) + {rest_cpu:.1f} CPU s of the "
            f"rest / {cores} cores = {bound:.1f} s at best, {most:.2f}x FP32 at most; "
            f"measured {auto['wall_s']:.1f} s")  # fmt: skip
    return {"seconds": bound, "vs_fp32": most, "text": text}


if __name__ == "__main__":
    main()
