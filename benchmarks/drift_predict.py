"""What drift gathering adds to ``seamline predict`` (issue #21; goal <= 5 % of predict).

Writes a SIZE^2 x 6 GeoTIFF (default 4096, benchmarks/out_of_core.py's writer), fits a
drift baseline with the demo model on it (drift map cells of 32 px on its grid), then runs
``seamline predict`` in fresh processes, alternating, ``--runs`` times each: without and
with ``--baseline --db --time``; and ``seamline drift check`` on the same scene, the
second read this replaces. Prints JSON, then a short table (medians). Not a test: minutes.
Usage: ``python benchmarks/drift_predict.py [--size 4096] [--precision fp32] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from out_of_core import run_cli, write_big_raster


def run(argv: list[str]) -> tuple[float, dict]:
    """A ``seamline`` command in a fresh process: wall seconds and its JSON."""
    start = time.perf_counter()
    done, _ = run_cli(argv, env=os.environ)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - start, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from seamline.core.hardware import cpu_label

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        scene, baseline = tmp / "scene.tif", tmp / "baseline.json"
        write_big_raster(scene, args.size)
        run(["drift", "baseline", str(scene), "--out", str(baseline), "--model", "demo"])
        predict = ["predict", str(scene), str(tmp / "out.tif"), "--precision", args.precision]
        runs: dict[str, list[dict]] = {"predict": [], "predict + drift": [], "drift check": []}
        for n in range(args.runs):
            for label, argv in (
                ("predict", predict),
                ("predict + drift", [*predict, "--baseline", str(baseline), "--db",
                                     str(tmp / f"a{n}.sqlite"), "--time", "2026-07-01"]),
                ("drift check", ["drift", "check", str(scene), "--baseline", str(baseline),
                                 "--db", str(tmp / f"b{n}.sqlite"), "--time", "2026-07-01"]),
            ):  # fmt: skip
                wall, report = run(argv)
                drift = report.get("drift")  # predict's check summary (drift check: a flag)
                runs[label].append({"wall_s": wall, "predict_s": report.get("seconds"),
                                    "gather_s": drift.get("gather_s")
                                    if isinstance(drift, dict) else None})  # fmt: skip
    medians = {label: {key: statistics.median(r[key] for r in rows) for key in rows[0]
                       if rows[0][key] is not None} for label, rows in runs.items()}  # fmt: skip
    base, gathered = medians["predict"]["predict_s"], medians["predict + drift"]["predict_s"]
    overhead = gathered / base - 1
    # The gathering's own seconds in each run with drift, against that run's predict seconds
    # without them: a share measured inside one process, not a difference of two noisy runs.
    shares = [r["gather_s"] / (r["predict_s"] - r["gather_s"]) for r in runs["predict + drift"]]
    share = statistics.median(shares)
    print(json.dumps({"cpu": cpu_label(), "size": args.size, "precision": args.precision,
                      "runs": runs, "medians": medians, "overhead": overhead,
                      "gather_share": share}, indent=2))  # fmt: skip
    print(f"\n{args.size}^2 x 6, {args.precision}, median of {args.runs}; {cpu_label()}")
    print(f"{'run':<18}{'wall s':>9}{'predict s':>11}{'gather s':>10}")
    for label, m in medians.items():
        print(f"{label:<18}{m['wall_s']:>9.1f}{m.get('predict_s', float('nan')):>11.2f}"
              f"{m.get('gather_s', float('nan')):>10.2f}")
    print(f"drift gathering adds {100 * overhead:+.1f} % to predict's own seconds between "
          f"runs; inside the runs it took {100 * share:.1f} % of the rest of predict "
          f"(a separate drift check: {medians['drift check']['wall_s']:.1f} s wall)")


if __name__ == "__main__":
    main()
