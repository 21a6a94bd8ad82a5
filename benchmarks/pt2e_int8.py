"""INT8 through torchao's PT2E on x86 Inductor, beside the INT8 Seamline runs (ONNX Runtime)
and BF16 + compile, on this CPU (issue #20: "INT8 ... on x86 Inductor where they work").

PT2E is not one of ``--precision auto``'s candidates: it needs the separate ``torchao``
package, and where it was measured it was not faster than ONNX Runtime's INT8
(docs/quantization.md). This script is how to check that on another CPU: it quantizes the
demo U-Net with ``X86InductorQuantizer`` (calibrated on the same tiles as ONNX Runtime's
INT8), compiles it with frozen weights, and times one 512^2 tile per call (median of 7 after
two warm-ups) next to FP32 eager, BF16 + compile and ONNX Runtime INT8 (one call on all
threads, and two calls in flight as tiled jobs run it), with each one's agreement with FP32.
Prints JSON, then a short table.

Usage: ``pip install torchao==0.18.0 && python benchmarks/pt2e_int8.py``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

RUNS = 7


def median_ms(run: Callable[[], object], calls: int = 1) -> float:
    """Median milliseconds per tile of ``run`` (``calls`` tiles per round)."""
    for _ in range(2):
        run()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / calls


def pt2e_int8(module: torch.nn.Module, tiles: torch.Tensor) -> tuple[torch.nn.Module, float]:
    """``module`` quantized by PT2E for x86 Inductor and compiled; the seconds it took."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    start = time.perf_counter()
    exported = torch.export.export(module, (tiles[:1],)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for tile in tiles:
        prepared(tile[None])
    compiled = torch.compile(convert_pt2e(prepared), dynamic=False)
    with inductor_config.patch(freezing=True):  # compiled on this first call
        compiled(tiles[:1])
    return compiled, time.perf_counter() - start


def main() -> None:
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise SystemExit("torchao is not installed: pip install torchao==0.18.0") from None
    from seamline.core.demo.synthetic import make_scene
    from seamline.core.hardware import cpu_label
    from seamline.core.models.modelio import load_model
    from seamline.core.optimise.auto import BACKENDS, build_backend
    from seamline.core.optimise.quantize import calibration_tiles, quantize

    demo = load_model("demo")
    scene = make_scene(1024, 1024, seed=3)[0]
    calibration = calibration_tiles(scene, demo, tile_size=512, count=4)
    tiles = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
    one = tiles[:1].contiguous(memory_format=torch.channels_last)
    rows = {}
    with torch.inference_mode():
        fp32 = demo.module.eval().to(memory_format=torch.channels_last)
        reference = torch.cat([fp32(t[None]) for t in tiles]).argmax(1)

        def row(name: str, forward: Callable, build_s: float, ms: float) -> None:
            classes = torch.cat([forward(t[None]) for t in tiles]).float().argmax(1)
            rows[name] = {"ms_per_tile": ms, "build_s": build_s,
                          "agreement": float((classes == reference).float().mean())}  # fmt: skip

        row("fp32 eager", fp32, 0.0, median_ms(lambda: fp32(one)))
        start = time.perf_counter()
        bf16 = build_backend(demo, BACKENDS["bf16+compile"], calibration=None, batch_size=1,
                             cache=False).module  # fmt: skip
        bf16(one)
        row("bf16+compile", bf16, time.perf_counter() - start, median_ms(lambda: bf16(one)))
        start = time.perf_counter()
        ort = quantize(demo, calibration, cache=False).module
        build = time.perf_counter() - start
        row("int8 ORT, 1 call", ort, build, median_ms(lambda: ort(one)))
        forward, calls = ort.parallel_forward()
        with ThreadPoolExecutor(calls) as pool:
            in_flight = median_ms(lambda: list(pool.map(forward, [one] * calls)), calls)
        row(f"int8 ORT, {calls} in flight", ort, build, in_flight)
    module = load_model("demo").module.eval()  # PT2E exports the eager module itself
    with torch.no_grad():  # inductor freezes weights (and prepacks INT8 ones) without grad only
        pt2e, build = pt2e_int8(module, tiles)
        row("int8 PT2E+inductor", pt2e, build, median_ms(lambda: pt2e(tiles[:1])))
    print(json.dumps({"cpu": cpu_label(), "tile": 512, "rows": rows}, indent=2))
    print(f"\nCPU: {cpu_label()}; demo U-Net, one 512^2 tile per call")
    print(f"{'backend':<24}{'ms/tile':>9}{'vs FP32':>9}{'agrees':>9}{'build s':>9}")
    base = rows["fp32 eager"]["ms_per_tile"]
    for name, r in rows.items():
        print(f"{name:<24}{r['ms_per_tile']:>9.1f}{base / r['ms_per_tile']:>8.2f}x"
              f"{r['agreement']:>9.2%}{r['build_s']:>9.1f}")


if __name__ == "__main__":
    main()
