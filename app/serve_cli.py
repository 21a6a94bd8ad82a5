"""``seamline serve-api``: the prediction service (:mod:`app.service`) under uvicorn.

Registered by :func:`app.cli.build_parser`. The model is loaded, quantized and warmed before
the server binds its port, so a bad model or option is one sentence from
:func:`app.cli.main`, exit status 2. FastAPI, uvicorn and torch are imported only when the
command runs.
"""

from __future__ import annotations

import argparse

from core.errors import InvalidArgumentError


def _cmd_serve_api(args: argparse.Namespace) -> None:
    import uvicorn

    from app.service import create_app

    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be between 0 and 65535, got {args.port}.")
    limits = {name: value for name in ("max_bytes", "max_pixels")
              if (value := getattr(args, name)) is not None}  # fmt: skip
    app = create_app(args.model, precision=args.precision, tile_size=args.tile_size,
                     overlap=args.overlap, blend=args.blend, **limits)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve-api``."""
    from app.cli import PRECISIONS  # here: app.cli imports this module

    p = sub.add_parser("serve-api", help="HTTP prediction service: POST a GeoTIFF to /predict")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (logged)")
    p.add_argument("--model", default="demo",
                   help="'demo', a .pt state dict, a .pt2 archive or a quantized .onnx")
    p.add_argument("--precision", choices=PRECISIONS, default="int8",
                   help="int8 (default) quantizes once at startup, calibrated on synthetic "
                   "scenes in the demo bands")
    p.add_argument("--max-bytes", type=int, help="largest upload in bytes (default 64 MiB)")
    p.add_argument("--max-pixels", type=int,
                   help="largest scene in pixels per band (default 4096 x 4096)")
    p.add_argument("--tile-size", type=int, default=512, help="default tile side per request")
    p.add_argument("--overlap", type=int, default=64, help="default tile overlap per request")
    p.add_argument("--blend", default="cosine", help="default blend: crop, linear, cosine or "
                   "gaussian")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning",
                                                            "info", "debug"))
    p.set_defaults(func=_cmd_serve_api)
