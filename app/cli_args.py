"""Arguments shared by several ``seamline`` subcommands (light: argparse only)."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seamline.core.data.limits import InputBudget

__all__ = [
    "add_assets_arg",
    "add_remote_host_flag",
    "add_trust_model_flag",
    "add_band_names_arg",
    "band_list",
    "batch_size_arg",
    "MAX_TILE_SIZE",
    "MIN_TILE_SIZE",
    "tile_size_arg",
    "DEFAULT_MODEL",
    "EO_TIMESERIES_ENV",
    "HISTORY_ENV",
    "MODELS_ENV",
    "stac_input",
    "TRUST_MODEL_ENV",
]

DEFAULT_MODEL = "demo"
"""The model the dashboard and the commands use unless told otherwise (``--model``)."""
EO_TIMESERIES_ENV = "SEAMLINE_EO_TIMESERIES"
"""Environment variable naming the real NDVI series folder the dashboard offers as a drift
source (``seamline serve --eo-timeseries DIR`` sets it)."""
HISTORY_ENV = "SEAMLINE_HISTORY"
"""Environment variable naming the drift history whose recorded checks the dashboard shows
(``seamline serve --history H.sqlite`` sets it)."""
MODELS_ENV = "SEAMLINE_MODELS"
"""Environment variable naming the dashboard's models, separated by ``os.pathsep`` (``seamline
serve --model SPEC``, repeatable, sets it); the first is selected."""
TRUST_MODEL_ENV = "SEAMLINE_TRUST_MODEL"
"""``1`` when the operator trusts the dashboard's model files (``seamline serve
--trust-model``): they may run code when loaded."""


def add_trust_model_flag(parser: argparse.ArgumentParser) -> None:
    """``--trust-model`` on a command that loads a model (see SECURITY.md, "Models")."""
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a model file that runs code when loaded (a pickled full "
                        "model, a class outside Seamline): only for files you trust")


def add_remote_host_flag(parser: argparse.ArgumentParser, surface: str) -> None:
    """``--allow-remote-host`` on a server whose visitors may name URLs (see SECURITY.md,
    "Remote rasters")."""
    parser.add_argument("--allow-remote-host", action="append", default=[], metavar="HOST",
                        help=f"let {surface} read COG URLs on HOST (host or host:port, "
                        "repeatable): GeoTIFF only, no redirects, within the input budget; "
                        "default: no URL")


MIN_TILE_SIZE = 16
MAX_TILE_SIZE = 8192  # a 100000 px tile asked torch for 240 GB, and died in a traceback


def tile_size_arg(text: str) -> int:
    """A tile side from the command line: an integer from :data:`MIN_TILE_SIZE` to
    :data:`MAX_TILE_SIZE` (a tile's activations grow with its area; tiles blend seam-free)."""
    try:
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number of pixels, got {text!r}") from None
    if side < MIN_TILE_SIZE:
        raise argparse.ArgumentTypeError(f"a tile is at least {MIN_TILE_SIZE} px, got {side}")
    if side > MAX_TILE_SIZE:
        raise argparse.ArgumentTypeError(
            f"a tile is at most {MAX_TILE_SIZE} px, got {side}: the tiles are blended "
            "seam-free, so a smaller one costs no accuracy")  # fmt: skip
    return side


def batch_size_arg(text: str) -> int:
    """Tiles per forward pass from the command line: a whole number of at least 1."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number of tiles, got {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"a batch is at least 1 tile, got {size}")
    return size


def band_list(text: str) -> list[str]:
    """Band names from the command line, separated by commas."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give band names separated by commas, e.g. red,green,blue")
    return names


def add_band_names_arg(parser: argparse.ArgumentParser, of: str = "the input") -> None:
    """``--band-names``: names for the bands of ``of`` (a file without band descriptions)."""
    parser.add_argument("--band-names", type=band_list, metavar="NAMES",
                        help=f"comma-separated names, one per band of {of}")  # fmt: skip


def print_json(obj: dict) -> None:
    """A command's result: one JSON object on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def input_budget(args: argparse.Namespace) -> InputBudget | None:
    """The default input budget, or None with ``--no-input-limits``."""
    from seamline.core.data.limits import DEFAULT_BUDGET

    return None if args.no_input_limits else DEFAULT_BUDGET


def add_assets_arg(parser: argparse.ArgumentParser) -> None:
    """``--assets``: INPUT is then a STAC item (see :func:`stac_input`)."""
    parser.add_argument("--assets", type=band_list, metavar="KEYS",
                        help="INPUT is a STAC item (file or URL): stack these band assets, in "
                        "the model's band order, e.g. B02,B03,B04,B08,B11,B12")  # fmt: skip


@contextmanager
def stac_input(args: argparse.Namespace) -> Iterator[None]:
    """With ``--assets``, the command's raster argument (``input``, or ``scene`` for ``drift
    check``) names a STAC item: while the block runs it is the VRT of those assets
    (:func:`seamline.core.data.stac.write_stac_vrt`, in a temporary folder)."""
    dest = next((name for name in ("input", "scene") if hasattr(args, name)), None)
    if not getattr(args, "assets", None) or dest is None:  # predict-many reads its own
        yield
        return
    from seamline.core.data.stac import write_stac_vrt

    with tempfile.TemporaryDirectory(prefix="seamline-stac-") as folder:
        vrt = write_stac_vrt(getattr(args, dest), args.assets, Path(folder) / "item.vrt")
        setattr(args, dest, str(vrt))
        yield
