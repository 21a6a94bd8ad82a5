"""``seamline predict``: tiled inference of a raster file into a georeferenced GeoTIFF, at
the backend ``--precision auto`` measured fastest (or the one asked for).

Registered by :func:`seamline.app.cli.build_parser`; user mistakes raise
:class:`seamline.core.errors.SeamlineError`, which :func:`seamline.app.cli.main` prints as one
sentence. Heavy imports (torch, rasterio, dask) happen inside the command.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from seamline.app import vectorize_cli
from seamline.app.cli_args import (
    DEFAULT_MODEL,
    add_assets_arg,
    add_band_names_arg,
    add_trust_model_flag,
    batch_size_arg,
    input_budget,
    print_json,
    tile_size_arg,
)
from seamline.app.drift_cli import check_history
from seamline.core.errors import BandMismatchError, InvalidArgumentError, SeamlineError
from seamline.core.models.registry import PRECISIONS


def _cmd_predict(args: argparse.Namespace) -> None:
    print_json(run_predict(args))


def run_predict(args: argparse.Namespace) -> dict:
    """``seamline predict`` with ``args``: its report."""
    from seamline.core.data.files import check_output_path
    from seamline.core.data.io import open_aoi, open_raster
    from seamline.core.hardware import bf16_is_native, cpu_info, device_label, peak_rss_bytes
    from seamline.core.models.modelio import (
        check_bands,
        check_precision_device,
        load_model,
        with_precision,
    )
    from seamline.core.predict.tiling import pick_device

    if args.vector:
        from seamline.core.vector.writers import vector_format

        if args.probabilities:
            raise InvalidArgumentError("--vector needs class ids: drop --probabilities.")
        vector_format(args.vector)  # a bad path fails now, not after the prediction
    if args.block_size is not None and args.scheduler is None:
        raise InvalidArgumentError(
            "--block-size sets the height of a --scheduler run's bands; without --scheduler, "
            "predict streams one tile row at a time: leave it out."
        )
    check_output_path(args.output, inputs=[args.input])  # before auto's minute, not after
    scene = open_raster(args.input, band_names=args.band_names)  # lazily: the header only
    if (budget := input_budget(args)) is not None:
        # Blocks stream through memory: the budget bounds the file's own blocks (GDAL decodes
        # a tile or strip whole to serve any window of it) and its data types.
        budget.check_scene(scene, source=f"raster {args.input!r}", streaming=True,
                           fix="rewrite it tiled (gdal_translate -co TILED=YES), or lift the "
                           "limit with --no-input-limits")  # fmt: skip
    model = load_model(args.model, model_class=args.model_class, trust_model=args.trust_model)
    aoi = open_aoi(args.aoi, layer=args.aoi_layer) if args.aoi else None
    check_bands(model, scene)  # before auto's measurement and the seam probe run the model
    precision = args.precision
    if model.precision != "fp32" and precision not in ("auto", model.precision):
        raise InvalidArgumentError(  # a quantized .onnx has no FP32 weights to convert
            f"Model {args.model!r} is {model.precision.upper()}: run it with --precision "
            f"{model.precision} or auto, or pass its FP32 model for {precision}."
        )
    if precision == "auto" and model.precision != "fp32":  # a quantized .onnx runs as it is
        precision = model.precision
    if args.calibration and (precision not in ("auto", "int8") or model.precision == "int8"):
        print(f"seamline predict: note: --calibration calibrates INT8 only: it is not used "
              f"for model {model.name!r} at {precision}"
              f"{' (quantized already)' if model.precision == 'int8' else ''}.",
              file=sys.stderr)  # fmt: skip
    if precision == "auto" and args.backend == "compile":
        raise InvalidArgumentError(
            "--backend compile picks a backend by hand: give it with --precision fp32 or bf16, "
            "or leave both out (--precision auto measures the compiled backends too)."
        )
    device = pick_device(args.device)
    check_precision_device(precision, device)
    if precision == "bf16" and device.type == "cpu" and not bf16_is_native():
        print("seamline predict: warning: BF16 is emulated on this CPU (no AMX or "
              "AVX512-BF16): expect it to be slower than fp32.", file=sys.stderr)
    batch_size = args.batch_size or (1 if device.type == "cpu" else 8)
    # Calibrated on tiles sampled across the scene being predicted (only they are read).
    calibration = (open_raster(args.calibration, band_names=args.band_names)
                   if args.calibration else scene)  # fmt: skip
    if args.calibration:  # its bands and statistics now, the file named, not after a minute
        from seamline.core.predict.inputs import ModelInput

        try:
            ModelInput.for_scene(model, calibration)
        except BandMismatchError as exc:
            raise BandMismatchError(f"--calibration {args.calibration!r}: {exc}") from None
    choice, why = None, ""  # why: what auto ran without a choice, and why
    if precision == "auto":
        from seamline.core.optimise.auto import AUTO_MIN_TILES, auto_backend, not_measured

        tile_size, tiles = _job_tiles(model, scene, aoi, args)
        # auto's model is FP32 here (a quantized one runs at its own precision, above)
        why = (f"{tiles} tile{'s' * (tiles != 1)} < {AUTO_MIN_TILES}, not worth measuring for: "
               f"FP32 ran (`seamline bench --backends --tile-size {tile_size}` measures once, "
               "for later jobs)")  # fmt: skip
        try:
            model, choice = auto_backend(
                model, calibration, tile_size=tile_size,
                tiles=tiles, batch_size=batch_size, device=device, cache=not args.no_cache,
                allow_compile=args.scheduler is None,  # compiled modules stay in this process
                notify=lambda text: print(f"seamline predict: {text}", file=sys.stderr),
                calibrate=args.calibration is not None,
                job_scene=scene if args.calibration else None,
            )  # fmt: skip
        except SeamlineError:  # the user's input (e.g. a calibration scene): one sentence
            raise
        except Exception as exc:  # noqa: BLE001 -- any measuring step may fail on a model
            why = not_measured(model.name, exc)
            print(f"seamline predict: warning: {why}", file=sys.stderr)
        if args.calibration and choice is not None and choice.backend != "int8":
            int8 = next((m for m in choice.measurements if m.backend == "int8"), None)
            said = (f"--calibration {args.calibration!r}: INT8 was dropped ({int8.note}), "
                    f"auto ran {choice.backend}" if int8 is not None and not int8.kept
                    else f"auto ran {choice.backend}, faster here than INT8: --calibration "
                    "calibrated nothing")  # fmt: skip
            print(f"seamline predict: note: {said}.", file=sys.stderr)
    elif precision == "int8" and model.precision != "int8":
        from seamline.core.optimise.quantize import quantize

        fp32, model = model, quantize(model, calibration, cache=not args.no_cache)
        if args.calibration:  # calibrated on another scene: does it hold on this one?
            _check_calibration(model, fp32, scene, args, batch_size, device)
    elif precision != model.precision:
        model = with_precision(model, precision)
    if args.backend == "compile":
        from seamline.core.optimise.backends import compiled

        fast = compiled(model.module, batch=batch_size, device=device, cache=not args.no_cache)
        model = model.with_module(fast, precision=model.precision)
    profile = _drift_profile(args, model) if args.baseline else None
    report = _file_predictor(args.scheduler, args.block_size)(
        args.input, args.output, model=model, aoi=aoi,
        probabilities=args.probabilities, cog=args.cog, band_names=args.band_names,
        tile_size=args.tile_size, overlap=args.overlap, blend=args.blend,
        batch_size=batch_size, device=device, cache=not args.no_cache,
        **({"resume": True} if args.resume else {}),
        **({"observe": profile} if profile is not None else {}),
    )  # fmt: skip
    if profile is not None:
        report["drift"] = _record_drift(args, profile)
    report.update(model=model.name, precision=model.precision, batch_size=batch_size,
                  peak_rss_mb=peak_rss_bytes() / 2**20, cpu=cpu_info()["capability"],
                  device=device_label(str(device)))  # fmt: skip
    if precision == "auto":
        report["backend"] = _backend_summary(choice, model, why)
        if choice is not None and not args.no_cache and args.scheduler is None:
            from seamline.core.optimise.auto import learn_job

            learn_job(choice, report["seconds"], report["tiles"])  # for the next job's pick
    if args.vector:
        report["vector"] = vectorize_cli.vectorize(args.output, args.vector)
    return report


def _check_calibration(int8, fp32, scene, args: argparse.Namespace, batch_size: int,
                       device) -> None:  # fmt: skip
    """Warn where INT8 calibrated on ``--calibration`` disagrees with FP32 on the input."""
    from seamline.core.optimise.flops import MIN_AGREEMENT, scene_agreement
    from seamline.core.predict.plan import choose_tile_size

    share = scene_agreement(int8, fp32, scene, tile_size=choose_tile_size(fp32, args.tile_size),
                            batch_size=batch_size, device=device)  # fmt: skip
    if share < MIN_AGREEMENT:
        print(f"seamline predict: warning: INT8 calibrated on {args.calibration!r} gives "
              f"FP32's classes on only {share:.1%} of sampled pixels of {args.input!r}: "
              "calibrate on a scene like the input (or leave --calibration out).",
              file=sys.stderr)  # fmt: skip


def _drift_profile(args: argparse.Namespace, model):
    """The drift profile predict gathers as rows stream (``--baseline``), after checking the
    options, the baseline, its classes and the history database, before any work."""
    from seamline.core.monitor.baseline import Baseline
    from seamline.core.monitor.check import check_classes
    from seamline.core.monitor.gather import RowProfile
    from seamline.core.monitor.history import parse_time

    if not (args.db and args.time):
        raise InvalidArgumentError(
            "--baseline records a drift check in a history: give --db H.sqlite and --time "
            "(the scene's acquisition time, ISO 8601) too."
        )
    if args.probabilities or args.scheduler or args.resume:
        raise InvalidArgumentError(
            "--baseline gathers drift from the class ids of one in-process run: drop "
            "--probabilities, --scheduler and --resume, or check drift apart "
            "(`seamline drift check`)."
        )
    parse_time(args.time)
    baseline = Baseline.load(args.baseline)
    check_classes(model, baseline)
    check_history(args.db, args.input)
    return RowProfile(baseline, classes=tuple(model.classes))


def _record_drift(args: argparse.Namespace, profile) -> dict:
    """Score the gathered profile against its baseline and add it to the ``--db`` history;
    the check's summary for predict's JSON."""
    from seamline.core.monitor.check import evaluate
    from seamline.core.monitor.history import History, parse_time

    result = evaluate(profile.parts(), profile.baseline, profile.scene,
                      classes=profile.classes, counts=profile.counts)  # fmt: skip
    with History(args.db) as history:
        history.add(result, time=parse_time(args.time), scene=args.input)
    summary = result.to_dict()
    return {key: summary[key] for key in ("score", "threshold", "drift", "driver")} | {
        "db": args.db, "gather_s": profile.seconds}


def _job_tiles(model, scene, aoi, args: argparse.Namespace) -> tuple[int, int]:
    """The tile side predict will use and how many tiles one grid over ``scene`` (its window
    around the ``aoi``) needs: what --precision auto weighs a compiled backend's build
    against, and whether the job is worth measuring for."""
    from seamline.core.predict.plan import choose_tile_size, plan_overlap
    from seamline.core.predict.tiling import Blend, TileGrid
    from seamline.core.prepare.scene import align_aoi, crop_to_aoi

    if aoi is not None:
        scene = crop_to_aoi(scene, align_aoi(aoi, scene.rio.crs))
    tile_size = choose_tile_size(model, args.tile_size)
    overlap, _ = plan_overlap(model, tile_size, args.blend, args.overlap)
    grid = TileGrid(scene.sizes["y"], scene.sizes["x"], tile_size, overlap,
                    Blend.parse(args.blend), model.align)  # fmt: skip
    return tile_size, len(grid)


def _backend_summary(choice, model, why: str) -> dict:
    """What ``--precision auto`` ran and why (``why`` where it made no choice), for predict's
    JSON."""
    if choice is None:
        return {"name": model.precision, "from_cache": False, "reason": why}
    chosen = next(m for m in choice.measurements if m.backend == choice.backend)
    return {"name": choice.backend, "from_cache": choice.from_cache, "reason": choice.reason,
            "ms_per_tile": chosen.ms_per_tile, "tile_size": choice.tile_size}  # fmt: skip


def _file_predictor(scheduler: str | None, block_size: int | None) -> Callable[..., dict]:
    """``predict_file``, or its dask.distributed twin on ``scheduler`` (``--scheduler``) in
    bands of tile rows about ``block_size`` pixels tall."""
    if scheduler is None:
        from seamline.core.predict.file import predict_file

        return predict_file
    from seamline.core.predict.distributed import DEFAULT_CHUNK, predict_file_distributed

    return functools.partial(predict_file_distributed, scheduler=scheduler,
                             block_size=block_size or DEFAULT_CHUNK)  # fmt: skip



def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``."""
    p = sub.add_parser("predict", help="tiled inference into a georeferenced GeoTIFF")
    p.add_argument("input", help="raster to predict (raw or prepared): a file, an http(s) "
                   "COG URL, or with --assets a STAC item")
    add_assets_arg(p)
    p.add_argument("output", help="class-id GeoTIFF to write (probabilities with --probabilities)")
    add_predict_options(p, batch=False)
    p.set_defaults(func=_cmd_predict)


def add_predict_options(p: argparse.ArgumentParser, *, batch: bool) -> None:
    """The options of ``predict`` (``batch``: those ``predict-many`` shares, without
    ``--resume`` (always on there), ``--vector``, ``--scheduler`` and ``--block-size``)."""
    p.add_argument("--aoi", help="predict only inside this area of interest (any CRS)")
    p.add_argument("--aoi-layer", help="the AOI file's layer, when it has several")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'demo', a .pt state dict, a .pt2 archive or a quantized .onnx")
    p.add_argument("--model-class", help="package.module:Class for a state dict")
    add_trust_model_flag(p)
    p.add_argument(
        "--tile-size",
        type=tile_size_arg,
        help="tile side in pixels (default: 512, or the size a .pt2 was exported for)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        help="pixels shared by neighbouring tiles (default: what covers the model's receptive "
        "field: 2x its radius for crop, 4x for the weighted blends)",
    )
    p.add_argument("--blend", default="cosine", help="crop, linear, cosine or gaussian")
    p.add_argument("--batch-size", type=batch_size_arg, default=None,
                   help="tiles per forward pass; default 1 on CPU (measured fastest: the "
                   "activations stay in cache, and memory stays low), 8 on a GPU")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="auto (default): the fastest backend agreeing with FP32 on 99.5%% of "
                   "pixels, measured once per model, tile and machine and cached (its INT8 "
                   "calibrated once, on the first scene measured); int8 quantizes an fp32 "
                   "model, calibrated on the input scene")
    p.add_argument("--calibration", metavar="SCENE",
                   help="calibrate int8, and auto's INT8 for this and later jobs, on this "
                   "scene instead")
    p.add_argument("--no-cache", action="store_true",
                   help="measure and quantize again, ignoring (and not writing) the disk cache")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--backend", default="eager", choices=("eager", "compile"),
                   help="compile: compiled ahead of time once per machine (AOTInductor, kept "
                   "in the disk cache), then faster tiles")
    p.add_argument("--probabilities", action="store_true", help="write class probabilities")
    add_band_names_arg(p)
    p.add_argument("--cog", action="store_true", help="write a Cloud Optimized GeoTIFF")
    p.add_argument("--no-input-limits", action="store_true",
                   help="lift the input budget on the file's internal blocks and data types "
                   "(the raster itself streams: its size is not limited)")
    if batch:
        p.set_defaults(resume=True, vector=None, scheduler=None, block_size=None,
                       baseline=None)  # fmt: skip
        return
    p.add_argument("--baseline", help="also check drift against this baseline JSON as the "
                   "rows stream (no second read) and record it in --db at --time")
    p.add_argument("--db", help="with --baseline: the drift history (SQLite; created if missing)")
    p.add_argument("--time", help="with --baseline: the scene's acquisition time, ISO 8601")
    p.add_argument("--resume", action="store_true",
                   help="stage finished rows beside OUTPUT (.OUTPUT.resume.npy) so that a "
                   "killed run, started again with --resume, computes only the rest (with "
                   "--scheduler: the same --block-size, only the bands not done)")
    p.add_argument("--vector", metavar="OUT", help="also write the class polygons (.gpkg, "
                   ".geojson or .parquet) beside the class raster")
    p.add_argument("--block-size", type=int,
                   help="with --scheduler: the height in pixels of each task's band of tile "
                   "rows (default 2048)")
    p.add_argument("--scheduler", metavar="ADDRESS|local",
                   help="predict on a dask.distributed cluster, one task per band of tile rows: "
                   "'local' "
                   "starts a LocalCluster, an address (tcp://host:8786) joins a running one")

