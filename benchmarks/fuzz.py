"""A long fuzz campaign: the hypothesis targets of tests/test_fuzz.py with many examples.

Runs pytest on tests/test_fuzz.py with ``SEAMLINE_FUZZ_EXAMPLES`` raised (default 2000 per
target) and hypothesis' statistics on, then prints, per target, the inputs tried and the
failures (JSON, then a short table). A failure is a crash, a 500, a traceback or a hang
past the deadline; pytest prints the falsifying example. Not a test: it never fails on time.
Usage: ``python benchmarks/fuzz.py [--examples 2000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seamline.core.hardware import cpu_label  # noqa: E402

STATS = re.compile(
    r"tests/test_fuzz\.py::(\w+):.*?(\d+) passing, (\d+) failing, and (\d+) invalid", re.S
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per target")
    args = parser.parse_args()
    env = {**os.environ, "SEAMLINE_FUZZ_EXAMPLES": str(args.examples), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
         "--hypothesis-show-statistics", "tests/test_fuzz.py"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    targets = {
        name: {"tried": int(ok) + int(bad), "failing": int(bad), "invalid": int(invalid)}
        for name, ok, bad, invalid in STATS.findall(run.stdout)
    }
    report = {
        "examples_per_target": args.examples,
        "targets": targets,
        "inputs_tried": sum(t["tried"] for t in targets.values()),
        "crashes": sum(t["failing"] for t in targets.values()),
        "pytest_exit": run.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu": cpu_label(),
    }
    print(json.dumps(report, indent=2))
    for name, t in targets.items():
        print(f"{name:<66}{t['tried']:>7} tried{t['failing']:>4} failing")
    if run.returncode:
        print(run.stdout[-6000:], file=sys.stderr)


if __name__ == "__main__":
    main()
