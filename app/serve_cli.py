"""``seamline serve-api``: the prediction service (:mod:`seamline.app.service`) under uvicorn.

Registered by :func:`seamline.app.cli.build_parser`. The model is loaded, quantized and warmed
before the server binds its port, so a bad model or option is one sentence from
:func:`seamline.app.cli.main`, exit status 2. FastAPI, uvicorn and torch are imported only when the
command runs.

The token comes from ``--token-file`` or, failing that, the ``SEAMLINE_API_TOKEN``
environment variable. Without one the service listens on a loopback address only, unless
``--insecure`` says that something else (a proxy, a private network) guards it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from seamline.app.cli_args import (
    DEFAULT_MODEL,
    add_band_names_arg,
    add_remote_host_flag,
    add_trust_model_flag,
)
from seamline.core.errors import InputFileError, InvalidArgumentError
from seamline.core.models.registry import PRECISIONS

if TYPE_CHECKING:
    from seamline.core.data.limits import InputBudget

TOKEN_ENV = "SEAMLINE_API_TOKEN"
MIN_TOKEN_LENGTH = 16
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _checked_token(token: str, source: str) -> str:
    """``token`` stripped, if it is long enough and fits an HTTP header; else one sentence."""
    token = token.strip()
    if not token:
        raise InvalidArgumentError(f"{source} is empty: put the token in it (e.g. {MAKE_TOKEN}).")
    if len(token) < MIN_TOKEN_LENGTH or not (token.isascii() and token.isprintable()) \
            or any(c.isspace() for c in token):  # fmt: skip
        raise InvalidArgumentError(
            f"{source} must hold one token of at least {MIN_TOKEN_LENGTH} printable ASCII "
            f"characters without spaces: make one with {MAKE_TOKEN}."
        )
    return token


def resolve_token(token_file: str | os.PathLike | None) -> str | None:
    """The service token: from ``token_file`` if given, else ``$SEAMLINE_API_TOKEN``, else None.

    A token file that is missing, empty, or readable by other users (mode ``o+r``: then it
    is no secret on a shared machine) is refused, as ssh refuses such a private key.
    """
    if token_file is None:
        token = os.environ.get(TOKEN_ENV)
        return None if token is None else _checked_token(token, f"${TOKEN_ENV}")
    path = Path(token_file)
    if not path.is_file():
        raise InputFileError(f"Token file {str(path)!r} does not exist: check --token-file.")
    if path.stat().st_mode & stat.S_IROTH:
        raise InvalidArgumentError(
            f"Token file {str(path)!r} is readable by every user of this machine: "
            f"restrict it with `chmod 600 {path}` (or pass the token in ${TOKEN_ENV})."
        )
    return _checked_token(path.read_text(errors="replace"), f"Token file {str(path)!r}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def budget_from_args(args: argparse.Namespace) -> InputBudget:
    """The service's input budget: the defaults, with the limits given on the command line."""
    from seamline.core.data.limits import InputBudget

    limits = {"max_bytes": args.max_bytes, "max_pixels": args.max_pixels,
              "max_bands": args.max_bands,
              "dtypes": args.dtypes and frozenset(t.strip() for t in args.dtypes.split(","))}
    return InputBudget(**{name: value for name, value in limits.items() if value is not None})


def _cmd_serve_api(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be between 0 and 65535, got {args.port}.")
    token = resolve_token(args.token_file)
    if token is None and not args.insecure and not is_loopback(args.host):
        raise InvalidArgumentError(
            f"--host {args.host} can be reached from other machines and no token is set, so "
            f"anyone there could use the service: pass --token-file FILE (or set {TOKEN_ENV}), "
            "or --insecure if a proxy or firewall guards it."
        )
    budget = budget_from_args(args)
    from seamline.core.data.remote import allowed_hosts

    hosts = allowed_hosts(args.allow_remote_host)
    import uvicorn

    from seamline.app.service import create_app

    calibration = None
    if args.calibration:
        from seamline.core.data.io import open_raster

        calibration = open_raster(args.calibration, band_names=args.band_names).load()
    app = create_app(args.model, precision=args.precision, tile_size=args.tile_size,
                     overlap=args.overlap, blend=args.blend, budget=budget,
                     token=token, trust_model=args.trust_model,
                     calibration=calibration, remote_hosts=hosts)  # fmt: skip
    # The access log has the method, path and status, never the headers (nor the token).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                server_header=False)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve-api``."""

    p = sub.add_parser("serve-api", help="HTTP prediction service: POST a GeoTIFF to /predict")
    add_trust_model_flag(p)
    add_remote_host_flag(p, "clients (POST /predict with {\"url\": ...})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any "
                   "other needs a token or --insecure)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (logged)")
    p.add_argument("--token-file", metavar="FILE",
                   help=f"require 'Authorization: Bearer <token>' on every path but /health, "
                   f"with the token in FILE (not readable by others); default: ${TOKEN_ENV}")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without a token (behind an "
                   "authenticating proxy or on a closed network)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'demo', a .pt state dict, a .pt2 archive or a quantized .onnx")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="auto (default): the fastest eager backend agreeing with FP32 on this "
                   "machine (measured once, cached; compiled ones would recompile per tile "
                   "size); int8 quantizes once at startup, calibrated on --calibration (the "
                   "demo model: on synthetic scenes)")
    p.add_argument("--calibration", metavar="SCENE",
                   help="a scene of the data the model will serve, with its bands: INT8 "
                   "calibrates on tiles of it (required for int8 unless the model is the demo)")
    add_band_names_arg(p, "the --calibration scene")
    p.add_argument("--max-bytes", type=int, help="largest upload in bytes (default 64 MiB)")
    p.add_argument("--max-pixels", type=int,
                   help="largest scene in values, width x height x bands (default "
                   "4096 x 4096 x 8)")
    p.add_argument("--max-bands", type=int, help="most bands per scene (default 512)")
    p.add_argument("--dtypes", metavar="TYPES",
                   help="allowed pixel types, comma-separated (default: 8 to 32-bit integers, "
                   "float32, float64)")
    p.add_argument(
        "--tile-size", type=int, help="default tile side per request (default: the model's, or 512)"
    )
    p.add_argument("--overlap", type=int,
                   help="default tile overlap per request (default: covers the model's "
                   "receptive field)")  # fmt: skip
    p.add_argument("--blend", default="cosine", help="default blend: crop, linear, cosine or "
                   "gaussian")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning",
                                                            "info", "debug"))
    p.set_defaults(func=_cmd_serve_api)
