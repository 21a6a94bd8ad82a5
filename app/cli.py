"""The ``seamline`` command line: the pipeline's stages as subcommands.

User mistakes (:class:`core.errors.SeamlineError`) are caught here, once, and printed as one
sentence on stderr with exit status 2; no traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from core.errors import InvalidArgumentError, SeamlineError

EXIT_USER_ERROR = 2
DASHBOARD = Path(__file__).with_name("dashboard.py")
WARMUP = Path(__file__).with_name("warmup.py")


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_prepare(args: argparse.Namespace) -> None:
    from core.prepare import prepare_file

    report = prepare_file(
        args.input,
        args.output,
        aoi_path=args.aoi,
        fit_stats=args.fit_stats,
        stats_path=args.stats,
        band_names=args.band_names,
        cog=args.cog,
        dst_crs=args.dst_crs,
        resolution=args.resolution,
        resampling=args.resampling,
        all_touched=args.all_touched,
        normalisation=args.normalisation,
    )
    _print_json(asdict(report))


def _cmd_demo_data(args: argparse.Namespace) -> None:
    from core.demo import write_demo_data

    if args.size < 1 or args.size > 16384:
        raise InvalidArgumentError(f"--size must be between 1 and 16384 pixels, got {args.size}.")
    paths = write_demo_data(args.outdir, synthetic_size=args.size, seed=args.seed)
    _print_json({role: str(path) for role, path in paths.items()})


def _cmd_serve(args: argparse.Namespace) -> None:
    command = [
        sys.executable, "-m", "panel", "serve", str(DASHBOARD),
        "--address", args.address, "--port", str(args.port),
        "--allow-websocket-origin", f"{args.address}:{args.port}",
        "--allow-websocket-origin", f"localhost:{args.port}",
        "--setup", str(WARMUP),
    ]  # fmt: skip
    if args.show:
        command.append("--show")
    os.execv(sys.executable, command)


def _band_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give band names separated by commas, e.g. red,green,blue")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="seamline",
        description="Geospatial segmentation from notebook to production: prepare, predict, "
        "optimise, serve and monitor.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="align CRS, clip to an AOI, handle nodata, normalise")
    p.add_argument("input", help="raster to prepare (GeoTIFF, COG, NetCDF)")
    p.add_argument("output", help="prepared GeoTIFF to write")
    p.add_argument("--aoi", help="area of interest (GeoJSON, Shapefile, GeoPackage), any CRS")
    p.add_argument("--dst-crs", help="reproject the raster to this CRS (e.g. EPSG:32633)")
    p.add_argument("--resolution", type=float, help="target pixel size in target CRS units")
    p.add_argument("--resampling", default="nearest", help="resampling when reprojecting")
    p.add_argument("--all-touched", action="store_true", help="keep every pixel the AOI touches")
    p.add_argument("--band-names", type=_band_list, help="comma-separated names, one per band")
    p.add_argument("--normalisation", choices=("zscore", "percentile"), default="zscore")
    p.add_argument("--cog", action="store_true", help="write a Cloud Optimized GeoTIFF")
    stats = p.add_mutually_exclusive_group()
    stats.add_argument(
        "--fit-stats",
        metavar="FILE",
        help="fit baseline band statistics on this scene, save them, normalise",
    )
    stats.add_argument("--stats", metavar="FILE", help="normalise with these band statistics")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("demo-data", help="write the embedded demo scenes, labels and AOI")
    p.add_argument("outdir", help="existing folder to write into")
    p.add_argument("--size", type=int, default=1024, help="synthetic scene size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("serve", help="start the dashboard with `panel serve`")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seamline`` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except SeamlineError as exc:
        print(f"seamline {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"seamline {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
