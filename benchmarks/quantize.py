"""INT8 and BF16 against FP32 on the demo model: size, latency, agreement and mIoU.

One run, one process: FP32 eager (channels-last, as Seamline runs it, and plain NCHW eager),
BF16 autocast and INT8 (ONNX Runtime, calibrated on a synthetic training-like scene) are
timed on the same batches (>= 30 runs each, warm-up excluded); agreement and mIoU on the
held-out synthetic scenes. Aims (issue 4): INT8 size <= 30 % of FP32, per-batch latency
>= 2.5x faster than FP32 eager, pixel agreement >= 99 %, mIoU drop <= 1 point.
Usage: ``python benchmarks/quantize.py [--tile 256] [--batch 4] [--runs 30]``.
"""

from __future__ import annotations

import argparse
import json
import time

from seamline.core.demo.train import demo_calibration, held_out_scenes
from seamline.core.hardware import bf16_is_native, cpu_info, cpu_label
from seamline.core.models.modelio import load_model, with_precision
from seamline.core.optimise.latency import quantization_report
from seamline.core.optimise.quantize import quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    fp32 = load_model("demo")
    start = time.perf_counter()
    int8 = quantize(fp32, demo_calibration(fp32))
    quantize_seconds = time.perf_counter() - start
    timing = {"tile_size": args.tile, "batch_size": args.batch, "runs": args.runs,
              "evaluation": list(held_out_scenes())}  # agreement and mIoU on labelled scenes
    rows = {
        "int8": quantization_report(fp32, int8, **timing),
        "bf16": quantization_report(fp32, with_precision(fp32, "bf16"), **timing),
    }
    report = {
        "benchmark": "quantize",
        "machine": cpu_info(),
        "bf16_native": bf16_is_native(),
        "quantize_seconds": quantize_seconds,
        "results": rows,
    }
    print(json.dumps(report, indent=2))
    int8_row = rows["int8"]
    print(
        f"\nquantize: demo U-Net, batch {args.batch} x {args.tile}^2, {args.runs} runs, on "
        f"{cpu_label()}; INT8 quantized in {quantize_seconds:.1f} s"
    )
    print(
        f"{'precision':<10}{'size MB':>9}{'batch p50 ms':>14}{'vs fp32 CL':>12}"
        f"{'vs fp32 NCHW':>14}{'agreement':>11}{'mIoU':>8}"
    )
    first = next(iter(rows.values()))
    nchw_vs_cl = first["latency_ms_p50_fp32"] / first["latency_ms_p50_fp32_nchw"]
    print(
        f"{'fp32':<10}{first['size_mb_fp32']:>9.3f}{first['latency_ms_p50_fp32']:>14.1f}"
        f"{'1.00x':>12}{1 / nchw_vs_cl:>13.2f}x{'1':>11}{first['miou_fp32']:>8.4f}"
    )
    print(
        f"{'fp32 NCHW':<10}{first['size_mb_fp32']:>9.3f}"
        f"{first['latency_ms_p50_fp32_nchw']:>14.1f}{nchw_vs_cl:>11.2f}x{'1.00x':>14}"
    )
    for name, r in rows.items():
        print(
            f"{name:<10}{r['size_mb']:>9.3f}{r['latency_ms_p50']:>14.1f}{r['speedup']:>11.2f}x"
            f"{r['speedup_vs_nchw_eager']:>13.2f}x{r['pixel_agreement']:>11.4f}"
            f"{r['miou']:>8.4f}"
        )
    print(
        f"aims (int8): size {100 * int8_row['size_ratio']:.1f} % (<= 30 %); speed "
        f"{int8_row['speedup_vs_nchw_eager']:.2f}x vs FP32 eager NCHW, "
        f"{int8_row['speedup']:.2f}x vs channels-last (>= 2.5x); agreement "
        f"{100 * int8_row['pixel_agreement']:.2f} % (>= 99 %); mIoU drop "
        f"{100 * (int8_row['miou_fp32'] - int8_row['miou']):.2f} points (<= 1)"
    )


if __name__ == "__main__":
    main()
