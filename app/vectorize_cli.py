"""``seamline vectorize``: class polygons from a class raster, as GeoPackage, GeoJSON or GeoParquet.

Registered by :func:`seamline.app.cli.build_parser`; user mistakes raise
:class:`seamline.core.errors.SeamlineError`, which :func:`seamline.app.cli.main` prints as one
sentence.
"""

from __future__ import annotations

import argparse
import json
import time


def vectorize(classes: str, output: str, **options) -> dict:
    """Write the polygons of a class raster; the summary gains seconds and peak RSS (MB).

    ``options`` go to :func:`seamline.core.vector.writers.write_polygons`. Also used by
    ``predict --vector``
    (where the peak RSS is that of the whole process, prediction included).
    """
    from seamline.core.hardware import peak_rss_bytes
    from seamline.core.vector.writers import write_polygons

    start = time.perf_counter()
    report = write_polygons(classes, output, **options)
    report.update(seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_bytes() / 2**20)
    return report


def _cmd_vectorize(args: argparse.Namespace) -> None:
    report = vectorize(
        args.classes,
        args.output,
        classes_to_keep=args.keep,
        min_area=args.min_area,
        simplify=args.simplify,
        connectivity=args.connectivity,
        window=args.window,
        background=args.background,
    )
    print(json.dumps(report, indent=2))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vectorize``."""
    p = sub.add_parser("vectorize", help="class polygons from a class raster")
    p.add_argument("classes", help="class-id GeoTIFF (as `seamline predict` writes)")
    p.add_argument("output", help="vector file to write: .gpkg, .geojson or .parquet (GeoParquet)")
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="A",
        help="drop polygons and fill holes smaller than A (CRS units squared)",
    )
    p.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        metavar="T",
        help="coverage simplification tolerance in CRS units (neighbours stay shared)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="read N x N pixels at a time (default: whole raster, 2048 if large)",
    )
    p.add_argument(
        "--class", dest="keep", nargs="+", metavar="NAME", help="only these classes (names or ids)"
    )
    p.add_argument("--background", metavar="NAME", help="class (name or id) without polygons")
    p.add_argument(
        "--connectivity",
        type=int,
        choices=(4, 8),
        default=4,
        help="4: pixels joined by edges (default); 8: corners join too",
    )
    p.set_defaults(func=_cmd_vectorize)
