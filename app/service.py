"""``seamline serve-api``: a low-latency prediction service (FastAPI on uvicorn).

``POST /predict`` takes a GeoTIFF as the raw request body (``Content-Type: image/tiff``), or
``{"url": "https://host/scene.tif"}`` (``Content-Type: application/json``) on a host the
operator allowed (``--allow-remote-host``), and answers the class-id GeoTIFF on the same grid
(CRS, transform), with the server-side latency in ``X-Seamline-Latency-Ms``. ``GET /health``
describes the model and the limits, ``GET /metrics`` counts requests by status and gives
latency percentiles over a bounded window.

- The model is loaded, quantized (INT8 through :class:`seamline.core.serve.cache.ModelCache`)
  and warmed once per process, by :func:`create_app`, before the server accepts a request.
- Inference runs on one worker thread: concurrent requests queue for it, so the model never
  runs twice at once on the same CPU threads. Decoding an upload runs beside it.
- Uploads are bounded by a :class:`~seamline.core.data.limits.InputBudget`: in bytes
  (``Content-Length`` and the body as it streams), in values and data types (from the
  GeoTIFF header, before decompression). Tiling options are bounded too (tile side,
  overlap), so a request cannot buy unbounded work. User mistakes are 4xx with a JSON body
  ``{"error": "one sentence"}``; anything else is a 500 with no traceback in the response.
- With a ``token``, every path but ``/health`` requires ``Authorization: Bearer <token>``,
  compared in constant time (:func:`hmac.compare_digest`); a missing or wrong one is a 401
  before the request's body or parameters are looked at. The token is never logged.

Nothing here is module-level state but the model cache, shared on purpose: each
:func:`create_app` call builds its own executor, metrics and limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from seamline.app.models import MODELS
from seamline.core.data.files import quiet_undecodable_gdal_messages
from seamline.core.data.io import geotiff_bytes, read_geotiff_bytes
from seamline.core.data.limits import DEFAULT_BUDGET, RASTER_FIX, InputBudget
from seamline.core.errors import (
    BandMismatchError,
    HostNotAllowedError,
    InvalidArgumentError,
    SeamlineError,
    SizeLimitError,
)
from seamline.core.hardware import no_huge_page_advice
from seamline.core.models.modelio import SegmentationModel, check_bands
from seamline.core.predict.plan import (
    DEFAULT_TILE_SIZE,
    choose_overlap,
    choose_tile_size,
    plan_overlap,
)
from seamline.core.predict.scene import predict_scene
from seamline.core.predict.tiling import Blend, predict_tiled
from seamline.core.prepare.scene import read_allowed_scene

__all__ = ["create_app", "MAX_TILE_SIZE", "OPEN_PATHS"]

log = logging.getLogger("seamline.service")

"""Models built once per process (shared on purpose: quantizing twice costs seconds)."""
MAX_TILE_SIZE = 1024  # a 1024^2 tile is ~60 GFLOP for the demo U-Net; larger buys nothing
MIN_TILE_SIZE = 64  # 8 px tiles bought 209 s of per-tile overhead for one small request
OPEN_PATHS = frozenset({"/health"})  # everything else needs the token when one is set
LATENCY_WINDOW = 1000  # requests kept for the latency percentiles in /metrics
TIFF_TYPES = ("image/tiff", "application/octet-stream")
JSON_TYPE = "application/json"
MAX_JSON_BYTES = 8192  # a {"url": ...} request; a longer body is not one
LATENCY_HEADER = "X-Seamline-Latency-Ms"
INFERENCE_HEADER = "X-Seamline-Inference-Ms"
TOKEN_FIX = "send the service's token as 'Authorization: Bearer <token>'"
BEARER_CHALLENGE = 'Bearer realm="seamline"'
CLIENT_CLOSED = 499  # nginx's "client closed request": counted apart from the server's 500s
INTERNAL_ERROR = "The prediction failed with an internal error: the server log has the details."


@dataclass
class _Metrics:
    """Request counts by status and a bounded window of successful latencies (ms)."""

    counts: Counter = field(default_factory=Counter)
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    queued: int = 0

    def record(self, status: int, ms: float) -> None:
        self.counts[str(status)] += 1
        if status == 200:
            self.latencies.append(ms)

    def snapshot(self) -> dict:
        window = np.asarray(self.latencies, dtype=float)
        p50, p95 = np.percentile(window, [50, 95]).tolist() if len(window) else (None, None)
        return {
            "requests": dict(sorted(self.counts.items())),
            "requests_total": sum(self.counts.values()),
            "latency_ms": {"p50": p50, "p95": p95, "window": len(window)},
            "queued": self.queued,
        }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status(exc: SeamlineError) -> int:
    """413 for a size limit, 403 for a host not allowed, 422 for any other user mistake (bad
    raster, bands, options)."""
    if isinstance(exc, SizeLimitError):
        return 413
    return 403 if isinstance(exc, HostNotAllowedError) else 422


def _validation_sentence(exc: RequestValidationError) -> str:
    """FastAPI's first validation error as one sentence naming the parameter."""
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    got = f", got {first['input']!r}" if "input" in first else ""
    return f"Parameter {name!r}: {first.get('msg', 'invalid value').lower()}{got}."


async def _read_body(request: Request, budget: InputBudget, *, source: str = "upload",
                     fix: str = RASTER_FIX) -> bytes:  # fmt: skip
    """The request body, refused (``SizeLimitError``, the sentence naming ``source`` and
    ``fix``) once it passes the budget's bytes, by its declared ``Content-Length`` or as it
    streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        budget.check_bytes(int(declared), source=source, fix=fix)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        budget.check_bytes(size, source=source, fix=fix)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_tiling(options: dict) -> None:
    """Refuse tiling that would buy unbounded work: the tile side is bounded by the query's
    validation, the overlap here (a stride of a few pixels means thousands of tiles)."""
    tile, overlap = options["tile_size"], options["overlap"]
    if tile > MAX_TILE_SIZE or overlap > tile // 2:
        raise InvalidArgumentError(
            f"overlap must be at most half of tile_size, and tile_size at most "
            f"{MAX_TILE_SIZE}, on this service, got tile_size {tile} and overlap {overlap}: "
            "a larger overlap multiplies the work per request."
        )


async def _read_scene(request: Request, media: str, budget: InputBudget,
                      hosts: tuple[str, ...]) -> xr.DataArray:  # fmt: skip
    """The request's scene: the GeoTIFF body, or the COG that a JSON body's ``url`` names
    (on an allowed host, :func:`~seamline.core.prepare.scene.read_allowed_scene`)."""
    if media != JSON_TYPE:
        body = await _read_body(request, budget)
        return await asyncio.to_thread(read_geotiff_bytes, body, budget=budget)
    body = await _read_body(request, InputBudget(max_bytes=MAX_JSON_BYTES),
                            source="JSON request body",
                            fix='send {"url": "https://host/scene.tif"} alone, or the GeoTIFF '
                                "itself with Content-Type: image/tiff")  # fmt: skip
    try:
        url = json.loads(body)["url"]
        if not isinstance(url, str):
            raise TypeError(url)
    except (ValueError, KeyError, TypeError):
        raise InvalidArgumentError(
            'A JSON request names a raster as {"url": "https://host/scene.tif"}: send that, '
            "or the GeoTIFF itself with Content-Type: image/tiff."
        ) from None
    return await asyncio.to_thread(read_allowed_scene, url, hosts, budget=budget,
                                   surface="service")  # fmt: skip


def _authorised(request: Request, digest: bytes) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` with the token whose
    SHA-256 is ``digest`` (digests compared in constant time: no length leaks either)."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = hashlib.sha256(credentials.strip().encode()).digest()
    return scheme.lower() == "bearer" and hmac.compare_digest(given, digest)


def _unauthorised(request: Request) -> JSONResponse:
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750); says whether a token was sent."""
    if "authorization" in request.headers:
        message, challenge = (f"The token is not valid: {TOKEN_FIX}.",
                              'Bearer realm="seamline", error="invalid_token"')  # fmt: skip
    else:
        message, challenge = f"This service requires a token: {TOKEN_FIX}.", BEARER_CHALLENGE
    return JSONResponse({"error": message}, status_code=401,
                        headers={"WWW-Authenticate": challenge})  # fmt: skip


def _warm(model: SegmentationModel, tile_size: int) -> None:
    """One tile through the tiled engine: kernels chosen, buffers allocated, memory format
    set, before the first request pays for it."""
    blank = np.zeros((len(model.bands), tile_size, tile_size), dtype=np.float32)
    predict_tiled(model.module, blank, tile_size=tile_size, overlap=0, batch_size=1,
                  device="cpu", align=model.align)  # fmt: skip


def _predict(model: SegmentationModel, scene: xr.DataArray, options: dict) -> tuple[bytes, float]:
    """Class-id GeoTIFF bytes for ``scene`` and the milliseconds the prediction took."""
    start = time.perf_counter()
    classes = predict_scene(model, scene, device="cpu", batch_size=1, **options)
    ms = (time.perf_counter() - start) * 1000
    return geotiff_bytes(classes), ms


def create_app(
    model: str | SegmentationModel,
    *,
    precision: str = "int8",
    budget: InputBudget = DEFAULT_BUDGET,
    token: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    blend: str = "cosine",
    trust_model: bool = False,
    calibration: xr.DataArray | None = None,
    remote_hosts: tuple[str, ...] = (),
) -> FastAPI:
    """The prediction service as an ASGI app, with the model loaded and warmed.

    Parameters
    ----------
    model
        ``"demo"``, a model file (see :func:`seamline.core.models.modelio.load_model`) or a
        loaded model.
    precision
        ``auto``, ``fp32``, ``bf16`` or ``int8`` (default: quantized once per process,
        calibrated on the synthetic scenes for the demo bands). ``auto``: the fastest eager
        backend that agrees with FP32, measured once per machine (see ``_auto``).
    budget
        Largest upload in bytes and scene in values (413 beyond), allowed data types (422).
    token
        When set, every path but ``/health`` requires ``Authorization: Bearer <token>``
        (401 otherwise). See :func:`seamline.app.serve_cli.resolve_token` for where it comes from.
    tile_size, overlap, blend
        Tiling used when a request does not set ``tile_size``, ``overlap`` or ``blend``
        (at most :data:`MAX_TILE_SIZE`, overlap at most half the tile; defaults: the
        model's tile size, else 512, and the overlap that covers its receptive field).
    trust_model
        Allow model files whose loading runs code (see
        :func:`seamline.core.models.modelio.load_model`).
    calibration
        The scene INT8 is calibrated on (required for ``int8`` unless the model is the demo's).
    remote_hosts
        Hosts whose COG URLs a client may send (``{"url": ...}``; see
        :func:`seamline.core.data.remote.allowed_hosts`); none by default (403).

    Raises :class:`seamline.core.errors.SeamlineError` (a bad model or option) before serving.
    """
    defaults = {"tile_size": tile_size or DEFAULT_TILE_SIZE, "overlap": overlap or 0,
                "blend": Blend.parse(blend)}  # fmt: skip
    _check_tiling(defaults)  # before the model loads: a bad option fails fast
    quiet_undecodable_gdal_messages()
    no_huge_page_advice()  # steady latency: see its docstring
    digest = hashlib.sha256(token.encode()).digest() if token else None
    own = None if calibration is None else lambda _model: calibration
    if calibration is not None:  # its bands before any work: auto fell back to FP32 and served
        try:
            check_bands(MODELS.get(model, precision=None, trust_model=trust_model), calibration)
        except BandMismatchError as exc:
            raise BandMismatchError(f"--calibration: {exc}") from None
    if precision == "auto":  # a server's job never ends: the fastest eager backend per tile
        ready, choice = MODELS.auto(model, tile_size=tile_size, trust_model=trust_model,
                                    calibration=own, calibrate=own is not None)  # fmt: skip
        if choice is not None:
            log.info("--precision auto: %s", choice.reason)
    else:
        ready, choice = MODELS.get(model, precision=precision, device="cpu",
                                   trust_model=trust_model, calibration=own), None  # fmt: skip
    defaults["tile_size"] = tile_size = choose_tile_size(ready, tile_size)
    defaults["overlap"] = choose_overlap(ready, tile_size, blend, overlap)
    planned = overlap is None  # the overlap covers the receptive field at each request's tiling
    if tile_size > MAX_TILE_SIZE:  # a .pt2 exported for one tile side
        raise InvalidArgumentError(
            f"Model {ready.name!r} takes only {tile_size} x {tile_size} px tiles, more than "
            f"the {MAX_TILE_SIZE} this service allows: export it for a smaller tile, or with "
            "a dynamic height and width."
        )
    _check_tiling(defaults)  # the overlap chosen to cover the model's receptive field
    _warm(ready, tile_size)
    metrics = _Metrics()
    workers: dict[str, ThreadPoolExecutor] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # One inference thread: requests queue for it instead of sharing the CPU threads.
        workers["inference"] = ThreadPoolExecutor(1, thread_name_prefix="seamline-inference")
        try:
            yield
        finally:
            workers.pop("inference").shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="Seamline prediction service", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_sentence(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{exc.detail}.")

    @app.middleware("http")
    async def authenticated(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Registered before `timed`, so it runs inside it: 401s on /predict are counted.
        if digest is None or request.url.path in OPEN_PATHS or _authorised(request, digest):
            return await call_next(request)
        return _unauthorised(request)

    @app.middleware("http")
    async def timed(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        if request.url.path == "/predict":
            ms = (time.perf_counter() - start) * 1000
            response.headers[LATENCY_HEADER] = f"{ms:.1f}"
            metrics.record(response.status_code, ms)
        return response

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok", "model": ready.name, "precision": ready.precision,
            "bands": list(ready.bands), "classes": list(ready.classes),
            "defaults": {**defaults, "blend": str(defaults["blend"])},
            "max_bytes": budget.max_bytes, "max_pixels": budget.max_pixels,
            "max_bands": budget.max_bands, "dtypes": sorted(budget.dtypes),
            "max_tile_size": MAX_TILE_SIZE,
            "backend": choice.backend if choice is not None else ready.precision,
            "auth": "bearer" if digest is not None else None,
            "remote_urls": bool(remote_hosts),  # whether, not which hosts
        }  # fmt: skip

    @app.get("/metrics")
    async def metrics_view() -> dict:
        return metrics.snapshot()

    @app.post("/predict")
    async def predict(
        request: Request,
        tile_size: int | None = Query(None, ge=MIN_TILE_SIZE, le=MAX_TILE_SIZE),
        overlap: int | None = Query(None, ge=0, le=MAX_TILE_SIZE // 2),
        blend: str | None = None,
    ) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (*TIFF_TYPES, JSON_TYPE):
            return _error(415, f"Content-Type {media or 'missing'!r} is not a GeoTIFF: send "
                               "the file as the body with Content-Type: image/tiff.")
        options = {
            key: value if value is not None else defaults[key]
            for key, value in (("tile_size", tile_size), ("overlap", overlap), ("blend", blend))
        }  # fmt: skip
        try:
            if planned and overlap is None and (tile_size, blend) != (None, None):
                # the default overlap covers the default tile (92 px, 422 for a 128 px tile)
                options["overlap"] = plan_overlap(ready, options["tile_size"], options["blend"])[0]
            _check_tiling(options)
            scene = await _read_scene(request, media, budget, remote_hosts)
            loop = asyncio.get_running_loop()
            metrics.queued += 1
            try:
                payload, model_ms = await loop.run_in_executor(
                    workers["inference"], _predict, ready, scene, options
                )
            finally:
                metrics.queued -= 1
        except SeamlineError as exc:
            return _error(_status(exc), str(exc))
        except ClientDisconnect:  # the client left mid-upload: its fault, not a server error
            log.info("POST /predict: the client disconnected before its upload ended")
            return _error(CLIENT_CLOSED, "The client closed the connection mid-upload.")
        except Exception:  # a bug, not the user's: log it, leak nothing
            log.exception("POST /predict failed")
            return _error(500, INTERNAL_ERROR)
        return Response(payload, media_type="image/tiff",
                        headers={INFERENCE_HEADER: f"{model_ms:.1f}"})  # fmt: skip

    return app
