"""The ``seamline`` command line: the pipeline's stages as subcommands.

User mistakes (:class:`seamline.core.errors.SeamlineError`) are caught here, once, and printed as
one sentence on stderr with exit status 2; no traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from seamline.app import drift_cli, predict_cli, predict_many_cli, serve_cli, vectorize_cli
from seamline.app.cli_args import (
    DEFAULT_MODEL,
    EO_TIMESERIES_ENV,
    HISTORY_ENV,
    MODELS_ENV,
    TRUST_MODEL_ENV,
    add_assets_arg,
    add_band_names_arg,
    add_remote_host_flag,
    add_trust_model_flag,
    batch_size_arg,
    input_budget,
    print_json,
    stac_input,
    tile_size_arg,
)
from seamline.app.cli_process import (
    Terminated,
    one_line_warnings,
    silence_stdout,
    terminate_cleanly,
)
from seamline.core.data.files import quiet_undecodable_gdal_messages
from seamline.core.errors import InvalidArgumentError, SeamlineError
from seamline.core.models.registry import PRECISIONS, builtin_model_path

EXIT_USER_ERROR = 2
DASHBOARD = Path(__file__).with_name("dashboard.py")
WARMUP = Path(__file__).with_name("warmup.py")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from seamline.core.prepare.scene import prepare_file

    stats = args.stats
    if stats is not None and (builtin_model_path(stats) or Path(stats).suffix in (".pt", ".pt2")):
        stats = (builtin_model_path(stats) or Path(stats)).with_suffix(".json")
    report = prepare_file(
        args.input,
        args.output,
        aoi_path=args.aoi,
        aoi_layer=args.aoi_layer,
        fit_stats=args.fit_stats,
        stats_path=stats,
        band_names=args.band_names,
        cog=args.cog,
        dst_crs=args.dst_crs,
        resolution=args.resolution,
        resampling=args.resampling,
        all_touched=args.all_touched,
        normalisation=args.normalisation,
        budget=input_budget(args),
    )
    print_json(asdict(report))


def _cmd_quantize(args: argparse.Namespace) -> None:
    import warnings

    from seamline.app.models import new_cache
    from seamline.core.demo.train import held_out_scenes
    from seamline.core.optimise.latency import quantization_report
    from seamline.core.optimise.quantize import QuantizationWarning, save_quantized

    if args.out is not None and args.precision == "bf16":
        raise InvalidArgumentError(
            "--out saves an INT8 model; a BF16 model is the FP32 one run with --precision bf16."
        )
    from seamline.core.data.files import check_output_path
    from seamline.core.data.io import open_raster
    from seamline.core.models.modelio import load_model

    if args.out is not None:
        if Path(args.out).suffix != ".onnx":  # as save_quantized, before the calibration
            raise InvalidArgumentError(f"An INT8 model is saved as .onnx, got {args.out!r}.")
        check_output_path(args.out)  # before minutes of work, not after
    cache = new_cache()
    fp32 = load_model(args.model, model_class=args.model_class, trust_model=args.trust_model)
    calibration = None
    if args.calibration:
        scene = open_raster(args.calibration, band_names=args.band_names)
        calibration = lambda _model: scene  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # the exporters' own chatter
        warnings.simplefilter("always", QuantizationWarning)
        optimised = cache.get(fp32, precision=args.precision, calibration=calibration)
    for warning in caught:
        print(f"seamline quantize: warning: {warning.message}", file=sys.stderr)
    if optimised.precision != args.precision:
        raise InvalidArgumentError(f"Model {fp32.name!r} could not be made {args.precision}.")
    # Agreement on the user's scenes (--evaluate, else the calibration scene); mIoU needs
    # labelled scenes: the demo model's held-out ones.
    scenes = args.evaluate or ([args.calibration] if args.calibration else [])
    evaluation = [(open_raster(path, band_names=args.band_names).load(), None) for path in scenes]
    if not evaluation and args.model == DEFAULT_MODEL:
        evaluation = held_out_scenes()
    report = quantization_report(fp32, optimised, tile_size=args.tile_size,
                                 batch_size=args.batch_size, runs=args.runs,
                                 evaluation=evaluation)  # fmt: skip
    if args.out is not None:
        report["out"] = str(save_quantized(optimised, args.out))
    print_json(report)


def _cmd_bench(args: argparse.Namespace) -> None:
    from seamline.app.models import new_cache
    from seamline.core.optimise.latency import measure_latency

    if args.backends:
        _bench_backends(args)
        return
    cache = new_cache()
    rows = [
        measure_latency(cache.get(args.model, precision=precision, trust_model=args.trust_model),
                        tile_size=args.tile_size, batch_size=args.batch_size,
                        runs=args.runs).to_dict()
        for precision in args.precisions
    ]  # fmt: skip
    if args.json:
        print_json({"bench": rows})
        return
    print(f"seamline bench: model {args.model}, tile {args.tile_size}, batch "
          f"{args.batch_size}, {args.runs} runs, on {rows[0]['cpu']}")
    print(f"{'precision':<10}{'batch p50':>11}{'p95':>9}{'tile p50':>10}{'p95':>9}"
          f"{'Mpx/s':>8}{'size MB':>9}{'peak RSS':>10}")
    for r in rows:
        print(f"{r['precision']:<10}{r['batch_ms_p50']:>9.1f}ms{r['batch_ms_p95']:>7.1f}ms"
              f"{r['tile_ms_p50']:>8.1f}ms{r['tile_ms_p95']:>7.1f}ms{r['megapixels_per_s']:>8.2f}"
              f"{r['size_mb']:>9.3f}{r['peak_rss_mb']:>8.0f}MB")


def _bench_backends(args: argparse.Namespace) -> None:
    """``seamline bench --backends``: every backend measured, and what auto picks."""
    from seamline.core.data.io import open_raster
    from seamline.core.demo.train import demo_calibration
    from seamline.core.models.modelio import load_model
    from seamline.core.optimise.auto import choose_backend
    from seamline.core.optimise.quantize import calibration_tiles

    model = load_model(args.model, trust_model=args.trust_model)
    scene = open_raster(args.calibration) if args.calibration else demo_calibration(model)
    tiles = calibration_tiles(scene, model, tile_size=args.tile_size)
    choice = choose_backend(model, tiles, tile_size=args.tile_size, batch_size=args.batch_size,
                            cache=not args.no_cache, remeasure=args.remeasure)  # fmt: skip
    if args.json:
        print_json({"backends": choice.to_dict(), "table": choice.table()})
        return
    cached = " (from the cache: --remeasure measures again)" if choice.from_cache else ""
    print(f"seamline bench --backends: model {args.model}, tile {args.tile_size}, batch "
          f"{args.batch_size}, {choice.gflop_per_tile:.1f} GFLOP per tile, on {choice.cpu}"
          f"{cached}")
    print(f"{'backend':<14}{'ms/tile':>9}{'vs FP32':>9}{'GFLOP/s':>9}{'% peak':>8}"
          f"{'agrees':>9}{'build s':>9}  note")
    for r in choice.table():
        peak = f"{r['percent_of_peak']:.0f}" if r["percent_of_peak"] is not None else "-"
        mark = "*" if r["chosen"] else " "
        print(f"{mark}{r['backend']:<13}{r['ms_per_tile']:>9.1f}{r['speedup']:>8.1f}x"
              f"{r['gflops']:>9.0f}{peak:>8}{r['agreement']:>9.2%}{r['build_s']:>9.1f}  "
              f"{r['note']}")
    peaks = ", ".join(f"{p} {v:.0f}" for p, v in choice.peaks.items() if v)
    print(f"peaks measured by matmul (GFLOP/s): {peaks}")
    print(f"auto: {choice.reason}")


def _cmd_report(args: argparse.Namespace) -> None:
    from seamline.app.report import write_report

    print_json({"report": str(write_report(args.output))})


def _cmd_train_demo(args: argparse.Namespace) -> None:
    from seamline.core.demo.train import train_demo
    out = Path(args.out) if args.out else builtin_model_path(DEFAULT_MODEL)
    model = train_demo(out, seed=args.seed, steps=args.steps,
                       log=lambda line: print(line, file=sys.stderr))
    print_json({"weights": str(out), "held_out": model.metadata["held_out"],
                 "receptive_radius": model.receptive_radius})


def _cmd_demo_data(args: argparse.Namespace) -> None:
    from seamline.core.demo.data import write_demo_data

    if args.size < 1 or args.size > 16384:
        raise InvalidArgumentError(f"--size must be between 1 and 16384 pixels, got {args.size}.")
    paths = write_demo_data(args.outdir, synthetic_size=args.size, seed=args.seed)
    print_json({role: str(path) for role, path in paths.items()})


def upload_message_bytes() -> int:
    """The dashboard's websocket message limit. An upload is one message, base64 (4/3) in
    JSON: room for twice the input budget, so a file over the budget still arrives and is
    refused in one sentence (Bokeh's default, 20 MiB, closed the session on a ~15 MB file)."""
    from seamline.core.data.limits import DEFAULT_BUDGET

    return 2 * DEFAULT_BUDGET.max_bytes * 4 // 3 + 2**20


def serve_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``panel serve`` command line and environment that ``seamline serve`` runs.

    The data roots travel in ``SEAMLINE_DATA_ROOTS``, the allowed remote hosts in
    ``SEAMLINE_REMOTE_HOSTS`` and the cookie secret in
    ``PANEL_COOKIE_SECRET`` (environment, not argv: other users can read a process's argv).
    ``--basic-auth`` without ``--cookie-secret`` gets a random secret: logins then last until
    the server restarts.
    """
    from seamline.core.data.paths import DATA_ROOTS_ENV, data_roots, roots_to_env
    from seamline.core.data.remote import REMOTE_HOSTS_ENV, allowed_hosts

    command = [
        sys.executable, "-m", "panel", "serve", str(DASHBOARD),
        "--address", args.address, "--port", str(args.port),
        "--allow-websocket-origin", f"{args.address}:{args.port}",
        "--allow-websocket-origin", f"localhost:{args.port}",
        "--setup", str(WARMUP),
        "--websocket-max-message-size", str(upload_message_bytes()),
    ]  # fmt: skip
    env = {**os.environ, DATA_ROOTS_ENV: roots_to_env(data_roots(args.data_root)),
           REMOTE_HOSTS_ENV: ",".join(allowed_hosts(args.allow_remote_host))}  # fmt: skip
    env[MODELS_ENV] = os.pathsep.join(args.model or [DEFAULT_MODEL])
    env[TRUST_MODEL_ENV] = "1" if args.trust_model else ""
    if args.eo_timeseries:
        env[EO_TIMESERIES_ENV] = str(Path(args.eo_timeseries).resolve())
    if args.history:
        env[HISTORY_ENV] = str(Path(args.history).resolve())
    if args.basic_auth:
        command += ["--basic-auth", args.basic_auth]
    if args.basic_auth or args.cookie_secret:
        env["PANEL_COOKIE_SECRET"] = args.cookie_secret or secrets.token_urlsafe(32)
    if args.show:
        command.append("--show")
    return command, env


def _cmd_serve(args: argparse.Namespace) -> None:
    from seamline.core.models.modelio import load_model

    # Each model loads here first: a bad file or flag is one sentence, not a dead page.
    args.model = [str(Path(m).resolve()) if Path(m).suffix else m
                  for m in (args.model or [DEFAULT_MODEL])]  # fmt: skip
    for spec in args.model:
        load_model(spec, trust_model=args.trust_model)
    command, env = serve_command(args)
    os.execve(sys.executable, command, env)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="seamline",
        description="Geospatial segmentation from notebook to production: prepare, predict, "
        "optimise, serve and monitor.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="align CRS, clip to an AOI, handle nodata, normalise")
    p.add_argument("input", help="raster to prepare (GeoTIFF, COG, NetCDF; a file or an http(s) "
                   "URL; with --assets a STAC item)")
    p.add_argument("output", help="prepared GeoTIFF to write")
    add_assets_arg(p)
    p.add_argument("--aoi", help="area of interest (GeoJSON, Shapefile, GeoPackage), any CRS")
    p.add_argument("--aoi-layer", help="the AOI file's layer, when it has several")
    p.add_argument("--dst-crs", help="reproject the raster to this CRS (e.g. EPSG:32633)")
    p.add_argument("--resolution", type=float, help="target pixel size in target CRS units")
    p.add_argument("--resampling", default="nearest", help="resampling when reprojecting")
    p.add_argument("--all-touched", action="store_true", help="keep every pixel the AOI touches")
    add_band_names_arg(p)
    p.add_argument("--normalisation", choices=("zscore", "percentile"), default="zscore")
    p.add_argument("--cog", action="store_true", help="write a Cloud Optimized GeoTIFF")
    p.add_argument("--no-input-limits", action="store_true",
                   help="lift the input budget (4096 x 4096 x 8 values held in memory) for a "
                   "batch job on trusted files")
    stats = p.add_mutually_exclusive_group()
    stats.add_argument(
        "--fit-stats",
        metavar="FILE",
        help="fit baseline band statistics on this scene, save them, normalise",
    )
    stats.add_argument("--stats", metavar="FILE",
                       help="normalise with these band statistics: a stats JSON, a model "
                       "(.pt/.pt2 with its sidecar) or 'demo'")
    p.set_defaults(func=_cmd_prepare)

    predict_cli.add_parser(sub)
    predict_many_cli.add_parser(sub)

    p = sub.add_parser("quantize", help="FP32 -> INT8 (calibrated) or BF16, with the figures")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'demo', a .pt state dict or a .pt2 archive")
    add_trust_model_flag(p)
    p.add_argument("--precision", default="int8", choices=("int8", "bf16"))
    p.add_argument("--calibration", metavar="SCENE",
                   help="calibrate on tiles of this scene (default: synthetic scenes in the "
                   "demo bands)")
    p.add_argument("--model-class", help="package.module:Class for a state dict")
    add_band_names_arg(p, "the --calibration and --evaluate scenes")
    p.add_argument("--evaluate", action="append", metavar="SCENE",
                   help="measure agreement with FP32 on this scene (repeatable; default: the "
                   "calibration scene, or the demo's labelled held-out scenes)")  # fmt: skip
    p.add_argument("--out", metavar="PATH.onnx", help="save the INT8 model (+ .json sidecar)")
    p.add_argument("--tile-size", type=tile_size_arg, default=256)
    p.add_argument("--batch-size", type=batch_size_arg, default=4)
    p.add_argument("--runs", type=int, default=30, help="timed runs (>= 30; warm-up excluded)")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("bench", help="latency report: fp32, bf16 and int8 side by side")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'demo', a .pt state dict or a .pt2 archive")
    add_trust_model_flag(p)
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "bf16", "int8"],
                   help="default: fp32 bf16 int8 (fp16 runs on a CUDA GPU)")
    p.add_argument("--tile-size", type=tile_size_arg, default=256)
    p.add_argument("--batch-size", type=batch_size_arg, default=1)
    p.add_argument("--runs", type=int, default=30, help="timed runs (>= 30; warm-up excluded)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--backends", action="store_true",
                   help="measure every backend (compiled, BF16, INT8) with GFLOP/s and %% of "
                   "this CPU's peak, and show what --precision auto picks")
    p.add_argument("--calibration", metavar="SCENE",
                   help="--backends: the scene whose tiles are timed and compared (default: "
                   "the demo model's calibration scene)")
    p.add_argument("--no-cache", action="store_true",
                   help="--backends: measure again, keeping nothing")
    p.add_argument("--remeasure", action="store_true",
                   help="--backends: measure again and keep the new table for --precision auto "
                   "(one measured while the machine was busy stays until then)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("report", help="write the current figures as a self-contained HTML page")
    p.add_argument("output", help="HTML file to write (opens offline: scripts are inlined)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("train-demo", help="train the demo U-Net on synthetic scenes")
    p.add_argument("--out", help="weights path (default: the packaged demo model)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train_demo)

    p = sub.add_parser("demo-data", help="write the embedded demo scenes, labels and AOI")
    p.add_argument("outdir", help="existing folder to write into")
    p.add_argument("--size", type=int, default=1024, help="synthetic scene size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("serve", help="start the dashboard with `panel serve`")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a server folder the dashboard may read (repeatable); default: "
                   "the demo data only")
    p.add_argument("--model", action="append", metavar="SPEC",
                   help="a model the page offers (repeatable; the first is selected): 'demo', "
                   "a .pt state dict with its .json sidecar, a .pt2 archive or an .onnx model; "
                   "default: demo")
    add_trust_model_flag(p)
    p.add_argument("--eo-timeseries", metavar="DIR",
                   help="offer this folder of dated NDVI scenes (the shared eo_timeseries "
                   "layout) as a drift source")
    p.add_argument("--history", metavar="H.sqlite",
                   help="show the drift checks recorded in this history (by `predict "
                   "--baseline --db` or `drift check --db`) in a 'Recorded checks' section")
    add_remote_host_flag(p, "visitors")
    p.add_argument("--basic-auth", metavar="FILE|PASSWORD",
                   help="ask for a login (Panel's --basic-auth): a JSON file of "
                   "{\"user\": \"password\"} (keep it private), or one password for any user")
    p.add_argument("--cookie-secret", metavar="SECRET",
                   help="signs the login cookie (default with --basic-auth: a random one "
                   "per start); set it so logins survive restarts")
    p.set_defaults(func=_cmd_serve)
    drift_cli.add_parser(sub)
    vectorize_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seamline`` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    quiet_undecodable_gdal_messages()
    previous = terminate_cleanly()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(args.command, warnings.showwarning)
            with stac_input(args):  # --assets: the STAC item's assets as one raster
                func(args)
    except SeamlineError as exc:
        print(f"seamline {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"seamline {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"seamline {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader of stdout left (`| head`): end quietly, as cat does
        silence_stdout()
        return 128 + signal.SIGPIPE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if argv is None:  # the console script: the process ends next
            # Python's last collections walk every object torch, xarray and dask made at
            # import: frozen, they are skipped (0.45 -> 0.15 s of exit after `import torch`).
            gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
