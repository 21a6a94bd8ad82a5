"""``seamline predict-many``: one model over many scenes, as a batch job that can be rerun.

Scenes come from folders (their GeoTIFFs), text files (one path or URL per line), raster
paths or URLs, and with ``--assets`` STAC items or catalogs (every item under them). Each
scene is predicted as ``seamline predict ... --resume`` would (rows staged beside its
output), into ``--out-dir/NAME.tif``: a scene whose output exists is skipped, a killed batch
started again finishes the scene it was in from its staged rows and goes on. Progress and
an ETA go to stderr, one line per scene; a scene that fails is one sentence there and the
batch goes on; the JSON summary lists what was done, skipped and failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from seamline.app import predict_cli
from seamline.app.cli_args import add_assets_arg, print_json
from seamline.core.data.remote import is_remote, source_path
from seamline.core.errors import InputFileError, InvalidArgumentError, SeamlineError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")


def _name(source: str) -> str:
    """The output name of a scene: its file's (or URL's) stem."""
    return source_path(source).stem


def _items(source: str, assets: list[str], folder: Path) -> Iterator[tuple[str, str]]:
    """``(name, VRT)`` of every STAC item at ``source`` (an item, or a catalog or collection
    and the items under it)."""
    import pystac

    from seamline.core.data.stac import read_stac, write_stac_vrt

    read = read_stac(source)
    items = [read] if isinstance(read, pystac.Item) else list(read.get_items(recursive=True))
    for item in items:
        yield item.id, str(write_stac_vrt(item.get_self_href() or source, assets,
                                          folder / f"{item.id}.vrt"))  # fmt: skip


def scenes(sources: list[str], assets: list[str] | None, folder: Path) -> list[tuple[str, str]]:
    """``(name, input)`` of every scene the sources name, in order; one sentence for a source
    that is none of the kinds, or two scenes with one name (their outputs would collide)."""
    found: list[tuple[str, str]] = []
    for source in sources:
        path = Path(source)
        if assets:
            found += _items(source, assets, folder)
        elif is_remote(source):
            found.append((_name(source), source))
        elif path.is_dir():
            found += [(p.stem, str(p)) for p in sorted(path.iterdir())
                      if p.suffix.lower() in RASTER_SUFFIXES]  # fmt: skip
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            found += [(_name(line), line) for line in lines if line and not line.startswith("#")]
        elif path.is_file():
            found.append((path.stem, str(path)))
        else:
            raise InputFileError(
                f"Source {source!r} is not a folder, a list (.txt), a raster or a URL: check "
                "the path."
            )
    names = [name for name, _ in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidArgumentError(
            f"Several scenes are named {', '.join(map(repr, twice))}: their outputs would "
            "collide; predict them in separate batches or rename them."
        )
    if not found:
        raise InputFileError("The sources hold no scene (.tif, .tiff, .vrt): check them.")
    return found


def _cmd_predict_many(args: argparse.Namespace) -> None:
    from seamline.core.predict.resume import StagedRows

    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise InvalidArgumentError(f"Output folder {str(out_dir)!r} does not exist: create it.")
    done, skipped, failed = [], [], []
    with tempfile.TemporaryDirectory(prefix="seamline-batch-") as folder:
        todo = scenes(args.sources, args.assets, Path(folder))
        start = time.perf_counter()
        for n, (name, source) in enumerate(todo, start=1):
            output = out_dir / f"{name}.tif"
            if output.exists() and not StagedRows.journal_of(output).exists():
                skipped.append(str(output))
                continue
            scene = argparse.Namespace(**vars(args) | {"input": source, "output": str(output),
                                                       "resume": True, "assets": None})
            try:
                done.append(predict_cli.run_predict(scene) | {"input": source})
            except SeamlineError as exc:
                failed.append({"input": source, "error": str(exc)})
                print(f"seamline predict-many: {name}: {exc}", file=sys.stderr)
            elapsed = time.perf_counter() - start
            left = len(todo) - n
            eta = elapsed / max(len(done) + len(failed), 1) * left
            print(f"seamline predict-many: [{n}/{len(todo)}] {name}: {elapsed:.1f} s so far, "
                  f"ETA {eta:.0f} s for {left} more", file=sys.stderr)  # fmt: skip
    print_json({"done": done, "skipped": skipped, "failed": failed,
                "seconds": time.perf_counter() - start})  # fmt: skip
    if failed:
        raise InputFileError(f"{len(failed)} of {len(todo)} scenes failed (listed above).")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``predict-many``."""
    p = sub.add_parser("predict-many", help="predict many scenes, skipping those done")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a folder of GeoTIFFs, a .txt list of paths or URLs, a raster or URL; "
                   "with --assets STAC items, catalogs or collections")  # fmt: skip
    p.add_argument("--out-dir", required=True, help="folder for the class rasters (NAME.tif)")
    add_assets_arg(p)
    predict_cli.add_predict_options(p, batch=True)
    p.set_defaults(func=_cmd_predict_many)
