"""Seam-freeness, measured: tiled vs untiled output of a fully convolutional model.

A random-weight ConvNet (receptive-field radius 6) runs untiled over a raster whose sides
are not multiples of the tile; ``predict_tiled`` in each blend mode and the seed recipe run
tiled. Prints max abs error, relative L2 error, and the relative L2 error in the outer
8-pixel border next to the interior's (a degraded border band shows as a ratio >> 1).
Aims: crop max abs <= 1e-5; linear/cosine/gaussian relative L2 <= 1e-3.

Usage: ``python benchmarks/seams.py [--height 1000] [--width 1300] [--tile 256] [--overlap 32]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_recipe import seed_predict  # noqa: E402

from seamline.core.demo.unet import ConvNet  # noqa: E402
from seamline.core.hardware import cpu_info, cpu_label  # noqa: E402
from seamline.core.predict.tiling import predict_tiled, seam_errors, untiled  # noqa: E402

AIMS = {"crop": ("max_abs", 1e-5), "linear": ("rel_l2", 1e-3), "cosine": ("rel_l2", 1e-3),
        "gaussian": ("rel_l2", 1e-3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--width", type=int, default=1300)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = ConvNet(bands=6, classes=5, width=16, depth=6).eval()
    image = np.random.default_rng(0).normal(size=(6, args.height, args.width)).astype(np.float32)
    reference = untiled(model, image, device="cpu")
    rows = {}
    for blend in AIMS:
        tiled = predict_tiled(model, image, tile_size=args.tile, overlap=args.overlap,
                              blend=blend, batch_size=8, device="cpu")
        rows[blend] = seam_errors(tiled, reference)
    seed = seed_predict(model, image, tile=args.tile, overlap=args.overlap)
    rows["seed recipe (linear)"] = seam_errors(seed, reference)
    for blend, (metric, aim) in AIMS.items():
        rows[blend]["aim"] = f"{metric} <= {aim:g}"
        rows[blend]["meets_aim"] = rows[blend][metric] <= aim

    report = {"benchmark": "seams", "machine": cpu_info(),
              "raster": [6, args.height, args.width], "tile": args.tile,
              "overlap": args.overlap, "receptive_radius": model.receptive_radius,
              "results": rows}
    print(json.dumps(report, indent=2))
    print(f"\nseams: {args.height} x {args.width}, tile {args.tile}, overlap {args.overlap}, "
          f"receptive radius {model.receptive_radius}, on {cpu_label()}")
    print(f"{'mode':<22}{'max abs':>11}{'rel L2':>11}{'border':>11}{'interior':>11}  aim")
    for name, r in rows.items():
        aim = f"{r['aim']} {'ok' if r['meets_aim'] else 'MISSED'}" if "aim" in r else ""
        print(f"{name:<22}{r['max_abs']:>11.2e}{r['rel_l2']:>11.2e}{r['border_rel_l2']:>11.2e}"
              f"{r['interior_rel_l2']:>11.2e}  {aim}")


if __name__ == "__main__":
    main()
