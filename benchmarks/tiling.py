"""Throughput of tiled inference vs the seed recipe, MONAI, and the model's own floor.

One run, one model (the demo U-Net architecture, 119k parameters), one raster and tile /
overlap, CPU. Compared:

- ``seamline``: ``seamline.predict_tiled`` (cosine blend, batched, channels-last), eager and
  with the model compiled by ``seamline.core.optimise.backends.compiled`` (compile time
  excluded: it is paid once per process and cached);
- ``seed``: the seed recipe (batch of one, host copy per tile, zero-padded edge tiles);
- ``monai``: ``monai.inferers.sliding_window_inference`` (gaussian), the established peer;
- ``floor``: the model's pure batched forward over the same number of tiles, nothing else.

Aims: >= 2x the seed recipe, >= 1x MONAI, <= 10 % over the floor. Prints JSON and a table,
with the CPU capability. Usage: ``python benchmarks/tiling.py [--size 2048] [--tile 256]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_recipe import seed_predict  # noqa: E402

from seamline.core.demo.unet import UNet  # noqa: E402
from seamline.core.hardware import cpu_info, cpu_label  # noqa: E402
from seamline.core.optimise.backends import compiled  # noqa: E402
from seamline.core.predict.tiling import Blend, TileGrid, predict_tiled  # noqa: E402


def timed_round_robin(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per function; runs interleave (A B C A B C ...) so that drifts in
    machine load (these machines are shared) hit every method alike. One warm-up each."""
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(r) for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = UNet(bands=6, classes=5).eval()
    image = np.random.default_rng(0).normal(size=(6, args.size, args.size)).astype(np.float32)
    grid = TileGrid(args.size, args.size, args.tile, args.overlap, Blend.COSINE, model.align)
    n_tiles = len(grid)
    tiles = torch.randn(n_tiles, 6, args.tile, args.tile)
    kw = {"tile_size": args.tile, "overlap": args.overlap, "batch_size": args.batch,
          "device": "cpu"}

    def floor(memory_format=torch.channels_last):
        m = model.to(memory_format=memory_format)
        with torch.inference_mode():
            for i in range(0, n_tiles, args.batch):
                m(tiles[i : i + args.batch].contiguous(memory_format=memory_format))

    def monai_run():
        from monai.inferers import sliding_window_inference

        m = model.to(memory_format=torch.contiguous_format)
        with torch.inference_mode():
            sliding_window_inference(torch.from_numpy(image)[None], (args.tile, args.tile),
                                     args.batch, m, overlap=args.overlap / args.tile,
                                     mode="gaussian")

    def seed_run():
        seed_predict(model.to(memory_format=torch.contiguous_format), image, args.tile,
                     args.overlap)

    fast = compiled(model, batch=args.batch)
    fns = {
        "seamline": lambda: predict_tiled(model, image, blend="cosine", **kw),
        "seamline_compiled": lambda: predict_tiled(fast, image, blend="cosine", **kw),
        "seamline_crop": lambda: predict_tiled(model, image, blend="crop", **kw),
        "floor": floor,
        "floor_nchw": lambda: floor(torch.contiguous_format),
        "seed": seed_run,
    }
    try:
        import monai  # noqa: F401

        fns["monai"] = monai_run
    except ImportError:
        print("monai not installed (pip install -e '.[bench]'): skipping it", file=sys.stderr)
    seconds = timed_round_robin(fns, args.repeats)

    megapixels = args.size**2 / 1e6
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(tiles[:1])
    gflop_per_tile = counter.get_total_flops() / 1e9
    ours = seconds["seamline"]
    report = {
        "benchmark": "tiling", "machine": cpu_info(),
        "raster": [6, args.size, args.size], "tile": args.tile, "overlap": args.overlap,
        "batch": args.batch, "tiles": n_tiles,
        "seconds": seconds,
        "megapixels_per_s": {k: megapixels / v for k, v in seconds.items()},
        "speedup_vs_seed": seconds["seed"] / ours,
        "speedup_vs_seed_compiled": seconds["seed"] / seconds["seamline_compiled"],
        "speedup_vs_monai": seconds["monai"] / ours if "monai" in seconds else None,
        "overhead_vs_floor": ours / seconds["floor"] - 1,
        "gflop_per_tile": gflop_per_tile,
        "achieved_gflop_per_s": gflop_per_tile * n_tiles / ours,
    }
    print(json.dumps(report, indent=2))
    print(f"\ntiling: {args.size}^2 x 6, tile {args.tile}, overlap {args.overlap}, batch "
          f"{args.batch}, {n_tiles} tiles, on {cpu_label()}")
    print(f"{'method':<16}{'seconds':>9}{'Mpx/s':>9}{'vs seamline':>13}")
    for name, s in seconds.items():
        print(f"{name:<16}{s:>9.3f}{megapixels / s:>9.2f}{s / ours:>12.2f}x")
    print(f"aims: >= 2x seed: {report['speedup_vs_seed']:.2f}x eager, "
          f"{report['speedup_vs_seed_compiled']:.2f}x compiled; >= 1x MONAI: "
          f"{report['speedup_vs_monai'] or float('nan'):.2f}x; <= 10 % over floor: "
          f"{100 * report['overhead_vs_floor']:.1f} %; {report['achieved_gflop_per_s']:.0f} "
          f"GFLOP/s ({gflop_per_tile:.2f} GFLOP per tile)")


if __name__ == "__main__":
    main()
