"""``seamline drift``: fit a baseline, check scenes into a history, print the history.

Registered by :func:`seamline.app.cli.build_parser`; user mistakes raise
:class:`seamline.core.errors.SeamlineError`, which :func:`seamline.app.cli.main` prints as one
sentence. Heavy imports (torch through the model) happen inside the commands.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from seamline.app.cli_args import add_assets_arg, add_trust_model_flag, print_json
from seamline.core.errors import InvalidArgumentError


def _loaded(path: str):
    """The raster at ``path`` read into memory; corrupt pixel data is one sentence."""
    from seamline.core.data.files import decoding
    from seamline.core.data.io import open_raster

    with decoding(f"Raster file {path!r}"):
        return open_raster(path).load()


def _cmd_baseline(args: argparse.Namespace) -> None:
    from seamline.core.data.files import check_output_path
    from seamline.core.monitor.fit import fit_baseline

    check_output_path(args.out)
    scenes = [_loaded(path) for path in args.scenes]
    baseline = fit_baseline(scenes, args.model, tile_size=args.tile_size,
                            trust_model=args.trust_model)  # fmt: skip
    baseline.save(args.out)
    print_json({
        "baseline": args.out,
        "fingerprint": baseline.fingerprint(),
        "scenes": baseline.scenes,
        "bands": list(baseline.bands),
        "indices": list(baseline.indices),
        "classes": list(baseline.classes),
        "model": baseline.model,
        "calibration": baseline.calibration,
        "thresholds": baseline.thresholds,
        "tile_size": baseline.tiles.size if baseline.tiles else None,
    })  # fmt: skip


def check_history(db: str, scene: str) -> None:
    """Before any work: an existing history ``db`` must be Seamline's (a foreign or corrupt
    file is one sentence); a new one must be writable beside ``scene``'s check (it is created
    once the check succeeded)."""
    from seamline.core.data.files import check_output_path
    from seamline.core.monitor.history import History

    if Path(db).exists():
        History(db).close()
    else:
        check_output_path(db, inputs=[scene])


def _cmd_check(args: argparse.Namespace) -> None:
    from seamline.core.data.files import check_output_path
    from seamline.core.data.io import write_raster
    from seamline.core.monitor.baseline import Baseline
    from seamline.core.monitor.check import check
    from seamline.core.monitor.history import History, parse_time

    time = parse_time(args.time)
    baseline = Baseline.load(args.baseline)
    if args.map_out:
        check_output_path(args.map_out, inputs=[args.scene, args.baseline])
    scene = _loaded(args.scene)
    if args.map_out and (baseline.tiles is None or not baseline.tiles.matches(scene)):
        raise InvalidArgumentError(
            f"Scene {args.scene!r} is not on the grid of the baseline's tiles, so no drift map "
            "can be made: fit the baseline on scenes of this grid, or drop --map-out."
        )
    model = args.model or baseline.model
    if args.labels and model is None:
        raise InvalidArgumentError(
            "--labels needs a model to score, and the baseline has none: pass --model demo or "
            "a model file."
        )
    labels = _loaded(args.labels) if args.labels else None
    check_history(args.db, args.scene)
    result = check(scene, baseline, model=model, labels=labels, trust_model=args.trust_model)
    written = write_raster(result.drift_map, args.map_out) if args.map_out else None
    try:
        with History(args.db) as history:
            history.add(result, time=time, scene=args.scene, map_path=written)
    except BaseException:  # no map without its history row
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    print_json({"time": time, "scene": args.scene, **result.to_dict(), "db": args.db,
                 "map_path": str(written) if written else None})  # fmt: skip


def _cmd_history(args: argparse.Namespace) -> None:
    from seamline.core.monitor.history import COLUMNS, History

    with History(args.db, create=False) as history:
        rows = history.records()
    if args.format == "json":
        print_json({"db": args.db, "records": rows})
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``drift`` with its ``baseline``, ``check`` and ``history`` subcommands."""

    drift = sub.add_parser("drift", help="monitor input and prediction drift over time")
    steps = drift.add_subparsers(dest="drift_command", required=True, metavar="STEP")

    p = steps.add_parser("baseline", help="fit a drift baseline on one or more scenes")
    p.add_argument("scenes", nargs="+", metavar="SCENE", help="baseline scenes (one sensor)")
    p.add_argument("--out", required=True, help="baseline JSON to write")
    p.add_argument("--model", help="also profile predicted class shares: 'demo' or a model file")
    p.add_argument("--tile-size", type=int, default=32, help="drift map cell in pixels")
    add_trust_model_flag(p)
    p.set_defaults(func=_cmd_baseline)

    p = steps.add_parser("check", help="check a scene against a baseline, record the result")
    p.add_argument("scene", help="scene to check (bands matched to the baseline's by name): a "
                   "file, an http(s) COG URL, or with --assets a STAC item")
    add_assets_arg(p)
    p.add_argument("--baseline", required=True, help="baseline JSON from `drift baseline`")
    p.add_argument("--db", required=True, help="history database (SQLite; created if missing)")
    p.add_argument("--time", required=True, help="acquisition time, ISO 8601")
    p.add_argument("--labels", help="class raster on the scene's grid: accuracy and mIoU")
    p.add_argument("--model", help="model for prediction shift (default: the baseline's)")
    p.add_argument("--map-out", help="write the per-tile drift map to this GeoTIFF")
    add_trust_model_flag(p)
    p.set_defaults(func=_cmd_check)

    p = steps.add_parser("history", help="print the recorded drift series")
    p.add_argument("--db", required=True, help="history database")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.set_defaults(func=_cmd_history)
