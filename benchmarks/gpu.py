"""The CUDA path on a lent GPU, in one short run (issue #20's GPU part).

1. The GPU: name, capability, torch/cuDNN versions, matmul peaks at FP32 (as cuDNN runs it:
   TF32 when allowed), BF16 and FP16.
2. ``--precision auto`` on CUDA: every candidate (FP32, BF16, FP16; eager and compiled)
   timed per tile at batch 8 with GFLOP/s, % of that peak, agreement with FP32 and build
   cost, for the demo U-Net and MONAI's BasicUNet (where MONAI is installed).
3. Memory layout (NCHW vs channels-last) and batch size for FP32 and FP16 eager.
4. ``seamline predict`` on a SIZE^2 x 6 GeoTIFF, tile 512 / 64, fresh processes, same run:
   FP32 on CUDA, auto cold, auto warm, FP16; wall, forward and the rest, peak RSS.
INT8 on CUDA: ONNX Runtime's CUDA provider where installed, else said so.

Usage: ``python benchmarks/gpu.py [--size 4096] [--json-out PATH]``. Prints each part's
table as it ends (a run cut off by a lease keeps what it measured), then the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

from backends import backend_tables, print_runs, print_tables, run_predict


def gpu_info(device: str) -> dict:
    """The GPU and its measured matmul peaks (GFLOP/s)."""
    import torch

    from seamline.core.hardware import cpu_label
    from seamline.core.optimise.flops import peak_gflops

    peaks = {p: peak_gflops(p, side=8192 if device == "cuda" else 1024, device=device)
             for p in ("fp32", "bf16", "fp16")}  # fmt: skip
    if device != "cuda":  # a dry run of this script on a CPU
        return {"name": cpu_label(), "capability": "cpu", "torch": torch.__version__,
                "cudnn": None, "peaks_gflops": peaks}  # fmt: skip
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name, "capability": f"{props.major}.{props.minor}",
        "memory_gib": props.total_memory / 2**30, "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "peaks_gflops": peaks,
    }  # fmt: skip


def layouts(tile_size: int, device: str) -> list[dict]:
    """ms per tile of the demo U-Net, eager, by precision, layout and batch (median of 20)."""
    import torch

    from seamline.core.models.modelio import load_model, with_precision
    from seamline.core.optimise.auto import _seconds

    rows = []
    for precision in ("fp32", "fp16"):
        model = load_model("demo")
        if precision != "fp32":
            model = with_precision(model, precision)
        for fmt in (torch.contiguous_format, torch.channels_last):
            module = model.module.to(device, memory_format=fmt).eval()
            for batch in (1, 8, 32):
                x = torch.randn(batch, 6, tile_size, tile_size, device=device).contiguous(
                    memory_format=fmt)
                with torch.inference_mode():
                    for _ in range(3):
                        module(x)
                    run = partial(module, x)
                    ms = statistics.median(_seconds(run, device) for _ in range(20))
                rows.append({"precision": precision, "batch": batch,
                             "ms_per_tile": 1000 * ms / batch,
                             "layout": "channels_last" if fmt is torch.channels_last
                             else "nchw"})  # fmt: skip
    return rows


def int8_on_cuda() -> str:
    """Whether ONNX Runtime here can run INT8 on the GPU."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers:
        return f"ONNX Runtime GPU providers present: {providers} (not yet measured)"
    return f"not available: ONNX Runtime here has only {providers}"


def end_to_end(size: int, cache: Path, device: str) -> dict:
    """Part 4 (see the module docstring)."""
    from out_of_core import write_big_raster

    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        write_big_raster(scene, size)
        env = os.environ | {"SEAMLINE_CACHE_DIR": str(cache)}
        argv = [str(scene), str(Path(tmp) / "out.tif"), "--tile-size", "512", "--overlap", "64",
                "--device", device]  # fmt: skip
        runs = [("fp32", ["--precision", "fp32"]), ("auto, cold cache", []), ("auto, warm", []),
                ("bf16", ["--precision", "bf16"])]  # fmt: skip
        if device == "cuda":
            runs.append(("fp16", ["--precision", "fp16"]))
        return {label: run_predict([*argv, *extra], env) for label, extra in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    parser.add_argument("--skip-tables", action="store_true",
                        help="parts 1 and 4 only: the GPU and seamline predict")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; this machine has none.")
    from seamline.core.hardware import cpu_label

    info = gpu_info(args.device)  # each part printed as it ends: a cut-off run keeps the rest
    print(f"GPU: {info['name']} (sm {info['capability']}), torch {info['torch']}, cuDNN "
          f"{info['cudnn']}; CPU: {cpu_label()}", flush=True)
    print("matmul peaks GFLOP/s: " + ", ".join(f"{k} {v or 0:,.0f}"
                                               for k, v in info["peaks_gflops"].items()))
    result = {"gpu": info, "cpu": cpu_label(), "int8": int8_on_cuda(), "size": args.size}
    print(f"INT8 on CUDA: {result['int8']}")
    result["layouts"], result["tables"] = [], []
    if not args.skip_tables:
        result["layouts"] = layouts(args.tile_size, args.device)
        print(f"\n{'precision':<10}{'layout':<15}{'batch':>6}{'ms/tile':>9}")
        for r in result["layouts"]:
            print(f"{r['precision']:<10}{r['layout']:<15}{r['batch']:>6}"
                  f"{r['ms_per_tile']:>9.2f}")  # fmt: skip
        for table in backend_tables(args.tile_size, device=args.device, batch_size=8):
            result["tables"].append(table)
            print_tables([table])
            sys.stdout.flush()
    with tempfile.TemporaryDirectory() as cache:
        runs = result["predict"] = end_to_end(args.size, Path(cache), args.device)
    print(f"\nseamline predict {args.size}^2 x 6 on {args.device}, tile 512, overlap 64 "
          "(fresh processes)")
    print_runs(runs)
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
