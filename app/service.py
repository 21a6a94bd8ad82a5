"""``seamline serve-api``: a low-latency prediction service (FastAPI on uvicorn).

``POST /predict`` takes a GeoTIFF as the raw request body (``Content-Type: image/tiff``) and
answers the class-id GeoTIFF on the same grid (CRS, transform), with the server-side latency
in ``X-Seamline-Latency-Ms``. ``GET /health`` describes the model and the limits, ``GET
/metrics`` counts requests by status and gives latency percentiles over a bounded window.

- The model is loaded, quantized (INT8 through :class:`core.latency.ModelCache`) and warmed
  once per process, by :func:`create_app`, before the server accepts a request.
- Inference runs on one worker thread: concurrent requests queue for it, so the model never
  runs twice at once on the same CPU threads. Decoding an upload runs beside it.
- Uploads are bounded in bytes (``Content-Length`` and the body as it streams) and in pixels
  (from the GeoTIFF header, before decompression). User mistakes are 4xx with a JSON body
  ``{"error": "one sentence"}``; anything else is a 500 with no traceback in the response.

Nothing here is module-level state but the model cache, shared on purpose: each
:func:`create_app` call builds its own executor, metrics and limits.
"""

from __future__ import annotations

import asyncio
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

from core.errors import SeamlineError, SizeLimitError
from core.io import geotiff_bytes, read_geotiff_bytes
from core.latency import ModelCache
from core.modelio import SegmentationModel
from core.predict import predict_scene
from core.tiling import Blend, predict_tiled

__all__ = ["create_app", "MODELS", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS"]

log = logging.getLogger("seamline.service")

MODELS = ModelCache()
"""Models built once per process (shared on purpose: quantizing twice costs seconds)."""
DEFAULT_MAX_BYTES = 64 * 2**20  # a 2048 x 2048 x 6 uint16 GeoTIFF is 48 MiB uncompressed
DEFAULT_MAX_PIXELS = 4096 * 4096  # per band; bounds the decoded size of a compressed upload
LATENCY_WINDOW = 1000  # requests kept for the latency percentiles in /metrics
TIFF_TYPES = ("image/tiff", "application/octet-stream")
LATENCY_HEADER = "X-Seamline-Latency-Ms"
INFERENCE_HEADER = "X-Seamline-Inference-Ms"
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
    """413 for a size limit, 422 for any other user mistake (bad raster, bands, options)."""
    return 413 if isinstance(exc, SizeLimitError) else 422


def _validation_sentence(exc: RequestValidationError) -> str:
    """FastAPI's first validation error as one sentence naming the parameter."""
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    got = f", got {first['input']!r}" if "input" in first else ""
    return f"Parameter {name!r}: {first.get('msg', 'invalid value').lower()}{got}."


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``SizeLimitError``) once it passes ``limit`` bytes, by
    its declared ``Content-Length`` or as it streams in."""
    too_large = f"The upload is larger than the {limit} bytes allowed: send a smaller scene."
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise SizeLimitError(too_large)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise SizeLimitError(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


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
    model: str | SegmentationModel = "demo",
    *,
    precision: str = "int8",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tile_size: int = 512,
    overlap: int = 64,
    blend: str = "cosine",
) -> FastAPI:
    """The prediction service as an ASGI app, with the model loaded and warmed.

    Parameters
    ----------
    model
        ``"demo"``, a model file (see :func:`core.modelio.load_model`) or a loaded model.
    precision
        ``fp32``, ``bf16`` or ``int8`` (default: quantized once per process, calibrated on
        the synthetic scenes for the demo bands).
    max_bytes, max_pixels
        Largest upload in bytes (413 beyond) and largest scene in pixels per band (413).
    tile_size, overlap, blend
        Tiling used when a request does not set ``tile_size``, ``overlap`` or ``blend``.

    Raises :class:`core.errors.SeamlineError` (a bad model or option) before serving.
    """
    ready = MODELS.get(model, precision=precision, device="cpu")
    defaults = {"tile_size": tile_size, "overlap": overlap, "blend": Blend.parse(blend)}
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
            "max_bytes": max_bytes, "max_pixels": max_pixels,
        }  # fmt: skip

    @app.get("/metrics")
    async def metrics_view() -> dict:
        return metrics.snapshot()

    @app.post("/predict")
    async def predict(
        request: Request,
        tile_size: int | None = Query(None, ge=8, le=4096),
        overlap: int | None = Query(None, ge=0, le=2048),
        blend: str | None = None,
    ) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in TIFF_TYPES:
            return _error(415, f"Content-Type {media or 'missing'!r} is not a GeoTIFF: send "
                               "the file as the body with Content-Type: image/tiff.")
        options = {
            key: value if value is not None else defaults[key]
            for key, value in (("tile_size", tile_size), ("overlap", overlap), ("blend", blend))
        }  # fmt: skip
        try:
            body = await _read_body(request, max_bytes)
            scene = await asyncio.to_thread(read_geotiff_bytes, body, max_pixels=max_pixels)
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
        except Exception:  # a bug, not the user's: log it, leak nothing
            log.exception("POST /predict failed")
            return _error(500, INTERNAL_ERROR)
        return Response(payload, media_type="image/tiff",
                        headers={INFERENCE_HEADER: f"{model_ms:.1f}"})  # fmt: skip

    return app
