"""Receptive field measured, overlap chosen from it, and the seam error that results.

For the demo U-Net and third-party networks (MONAI's UNet and BasicUNet with batch norm,
SegResNet with group norm), seeded random weights with moved batch-norm statistics:
``measure_geometry`` (impulse responses of one 256 px probe tile) gives the stride, the
support of the response (``reach``, the theoretical field as far as it acts) and the
effective radius holding all but 1e-3 of it; ``plan_overlap`` chooses the overlap for the
cosine blend; tiled output is compared with one untiled pass at that overlap and at half of
it. Figures are measured in one run on this machine; the CPU capability is printed.

Usage: ``python benchmarks/receptive_field.py [--size 768] [--tile 256]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from seamline import load_model
from seamline.core.hardware import cpu_label
from seamline.core.models.geometry import measure_geometry
from seamline.core.predict.plan import plan_overlap
from seamline.core.predict.tiling import predict_tiled, seam_errors, untiled

BANDS = 6


def networks() -> dict[str, torch.nn.Module]:
    """The networks measured: ours, and MONAI's where it is installed."""
    found = {"demo U-Net": load_model("demo").module}
    try:
        from monai.networks import nets
    except ImportError:
        print("MONAI is not installed (pip install -e '.[test]'): its networks are skipped")
        return found
    specs = {
        "MONAI UNet (batch norm)": (nets.UNet, {"channels": (8, 16, 32), "strides": (2, 2),
                                                "num_res_units": 1, "norm": "batch"}),
        "MONAI BasicUNet (batch norm)": (nets.BasicUNet, {"features": (8, 8, 16, 32, 64, 8),
                                                          "norm": "batch"}),
        "MONAI SegResNet (group norm)": (nets.SegResNet, {"init_filters": 8,
                                                          "blocks_down": (1, 2),
                                                          "blocks_up": (1,)}),
    }  # fmt: skip
    for name, (cls, init) in specs.items():
        torch.manual_seed(0)
        net = cls(spatial_dims=2, in_channels=BANDS, out_channels=4, **init)
        with torch.no_grad():
            net.train()(torch.randn(4, BANDS, 64, 64))  # batch-norm statistics off 0/1
        found[name] = net.eval()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--tile", type=int, default=256)
    args = parser.parse_args()
    image = np.random.default_rng(0).normal(size=(BANDS, args.size, args.size))
    image = image.astype(np.float32)
    rows = []
    for name, net in networks().items():
        start = time.perf_counter()
        geometry = measure_geometry(net, BANDS)
        seconds = time.perf_counter() - start
        model = load_model(net, bands=[f"b{i}" for i in range(BANDS)])
        overlap, problems = plan_overlap(model, args.tile, "cosine")
        reference = untiled(net, image, device="cpu")
        errors = {}
        half = overlap // 2 // model.align * model.align
        for label, used in (("chosen", overlap), ("half", half)):
            tiled = predict_tiled(net, image, tile_size=args.tile, overlap=used, blend="cosine",
                                  batch_size=4, device="cpu", align=model.align)  # fmt: skip
            errors[label] = {"overlap": used, **seam_errors(tiled, reference)}
        rows.append({"network": name, "stride": geometry.align, "reach_px": geometry.reach,
                     "effective_px": geometry.receptive_radius,
                     "non_local": list(geometry.non_local[:2]), "measure_s": round(seconds, 2),
                     "errors": errors, "note": " ".join(problems)})  # fmt: skip
    report = {"cpu": cpu_label(), "size": args.size, "tile": args.tile, "blend": "cosine",
              "tolerance": 1e-3, "rows": rows}  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"\n{cpu_label()}; {args.size}^2 x {BANDS} random input, tile {args.tile}, cosine")
    print(f"{'network':<30}{'stride':>7}{'reach':>7}{'eff.':>6}{'overlap':>9}{'max |d|':>10}"
          f"{'half ov.':>10}{'max |d|':>10}{'probe s':>9}")  # fmt: skip
    for r in rows:
        chosen, half = r["errors"]["chosen"], r["errors"]["half"]
        print(f"{r['network']:<30}{r['stride'] or '-':>7}{r['reach_px']:>7}"
              f"{r['effective_px']:>6}{chosen['overlap']:>9}{chosen['max_abs']:>10.1e}"
              f"{half['overlap']:>10}{half['max_abs']:>10.1e}{r['measure_s']:>9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
