"""The ``predict`` stage: georeferenced predictions in memory or streamed file to file.

:func:`predict_scene` returns a DataArray on exactly the prepared scene's grid.
:func:`predict_file` streams a raster larger than memory: it reads blocks (plus a halo that
covers the model's receptive field) from disk, runs the tiled engine on each, and writes the
centre of each block into a tiled GeoTIFF/COG, so peak memory does not grow with the raster.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import torch
import xarray as xr
from rasterio.features import geometry_mask
from rasterio.windows import Window

from core.bandstats import normalise
from core.errors import BandMismatchError, InvalidArgumentError, NoDataError
from core.io import atomic_path, check_output_path, decoding, open_raster, valid_mask
from core.modelio import SegmentationModel, check_bands, load_model
from core.prepare import align_aoi, crop_to_aoi
from core.tiling import predict_tiled

__all__ = [
    "predict_scene",
    "predict_file",
    "predict_block",
    "as_prediction",
    "block_halo",
    "aligned_chunks",
    "output_raster",
    "TileTimer",
    "CLASS_NODATA",
]

CLASS_NODATA = 255
try:  # glibc only: see _release_freed_memory
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None
GDAL_CACHE = 64 * 2**20  # bytes (rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64)


@dataclass
class TileTimer:
    """Model seconds per tile over a run: pass ``record`` as the ``timing`` callback of
    :func:`core.tiling.predict_tiled` (a batch's call time / its tiles; with calls in flight
    together, the time each adds to the run)."""

    tile_seconds: list[float] = field(default_factory=list)

    def record(self, seconds: float, tiles: int) -> None:
        """Record a batch of ``tiles`` that took ``seconds``."""
        self.tile_seconds += [seconds / tiles] * tiles

    def summary(self) -> dict[str, float]:
        """Tile latency p50/p95 in ms."""
        if not self.tile_seconds:
            return {"tile_ms_p50": float("nan"), "tile_ms_p95": float("nan")}
        p50, p95 = np.percentile(self.tile_seconds, [50, 95]) * 1000
        return {"tile_ms_p50": float(p50), "tile_ms_p95": float(p95)}


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Blocks allocate and free hundreds of MB of numpy/torch buffers each; glibc keeps freed
    chunks below its mmap threshold in the heap, so without a trim RSS climbs with the number
    of blocks (measured: 1.77 GB peak on 16384^2 without, see benchmarks/out_of_core.py).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _model_input(model: SegmentationModel, scene: xr.DataArray) -> np.ndarray:
    """Float32 ``(bands, y, x)`` in the model's band order, normalised with its statistics."""
    order = check_bands(model, scene)
    if scene.attrs.get("normalisation"):  # already prepared: with the model's statistics?
        used = scene.attrs.get("band_stats")
        if model.stats is not None and used != model.stats.fingerprint():
            raise BandMismatchError(
                f"The scene was normalised with other band statistics ({used}) than model "
                f"{model.name!r} was trained with ({model.stats.fingerprint()}): prepare it "
                "with `--stats` set to the model (e.g. --stats demo), or pass the raw scene."
            )
        return np.asarray(scene.values[order], dtype=np.float32)
    if model.stats is not None:
        return normalise(scene, model.stats).values
    values = np.asarray(scene.values[order], dtype=np.float32)
    values[:, ~valid_mask(scene)] = np.nan
    return values


def _finish(logits: np.ndarray, valid: np.ndarray, probabilities: bool) -> np.ndarray:
    """Class ids (uint8, 255 = nodata) or softmax probabilities (float32, NaN = nodata)."""
    if probabilities:
        probs = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
        probs[:, ~valid] = np.nan
        return probs
    classes = class_ids(logits)
    classes[~valid] = CLASS_NODATA
    return classes


def class_ids(logits: np.ndarray) -> np.ndarray:
    """``(C, y, x)`` scores -> ``(y, x)`` uint8 index of the highest (the first on a tie, as
    ``np.argmax``); the scores must be NaN-free, as the tiled engine's are (it feeds nodata
    as 0). One pass per class: ``np.argmax(axis=0)`` copies the scores transposed first, and
    took 0.09-0.37 s on 5 x 2048^2 (page faults on the 80 MB copy) against 0.03 s here."""
    scores = torch.from_numpy(np.ascontiguousarray(logits))
    best = scores[0].clone()
    ids = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for c in range(1, scores.shape[0]):  # a loop over classes, not pixels
        ids.masked_fill_(scores[c] > best, c)
        torch.maximum(best, scores[c], out=best)
    return ids.numpy()


def predict_scene(
    model: SegmentationModel | torch.nn.Module | str,
    scene: xr.DataArray,
    *,
    probabilities: bool = False,
    tile_size: int = 512,
    overlap: int = 64,
    blend: str = "cosine",
    batch_size: int = 8,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    timing: Callable[[float, int], None] | None = None,
) -> xr.DataArray:
    """Predict a scene; the result is on exactly the scene's grid (CRS, transform, shape).

    The scene may be raw (it is then normalised with the model's baseline statistics) or
    already prepared. Returns ``(y, x)`` uint8 class ids with nodata 255, or with
    ``probabilities=True`` a ``(class, y, x)`` float32 softmax with NaN nodata. Tiling
    arguments are those of :func:`core.tiling.predict_tiled`.

    A dask-backed scene (``open_raster(path, chunks=...)``) gives a lazy result computed chunk
    by chunk on the active dask scheduler: see :func:`core.distributed.predict_chunked`.
    """
    if scene.chunks is not None:
        from core.distributed import predict_chunked

        return predict_chunked(
            model, scene, probabilities=probabilities, tile_size=tile_size, overlap=overlap,
            blend=blend, batch_size=batch_size, device=device,
        )  # fmt: skip
    model = load_model(model)
    x = _model_input(model, scene)
    valid = valid_mask(scene)
    if not valid.any():
        raise NoDataError("The scene has no valid pixels: nothing to predict.")
    logits = predict_tiled(
        model.module, x, tile_size=tile_size, overlap=overlap, blend=blend,
        batch_size=batch_size, device=device, progress=progress, timing=timing,
        align=model.align,
    )  # fmt: skip
    return as_prediction(_finish(logits, valid, probabilities), scene, model)


def as_prediction(
    out: np.ndarray, scene: xr.DataArray, model: SegmentationModel
) -> xr.DataArray:
    """``(y, x)`` class ids or ``(class, y, x)`` probabilities (numpy or dask) as a
    prediction on the scene's grid: CRS, transform, nodata, class names and colours."""
    probabilities = out.ndim == 3
    coords = {"y": scene["y"], "x": scene["x"]}
    dims: tuple[str, ...] = ("y", "x")
    if probabilities:
        dims, coords = ("class", "y", "x"), {"class": list(model.classes), **coords}
    result = xr.DataArray(
        out, dims=dims, coords=coords, name="prediction",
        attrs={"classes": list(model.classes), "colors": list(model.colors),
               "model": model.name, "precision": model.precision},
    )  # fmt: skip
    if probabilities:
        result.attrs["long_name"] = tuple(model.classes)
    result.rio.write_crs(scene.rio.crs, inplace=True)
    result.rio.write_transform(scene.rio.transform(), inplace=True)
    return result.rio.write_nodata(np.nan if probabilities else CLASS_NODATA, encoded=False)


def block_halo(model: SegmentationModel, overlap: int) -> int:
    """Pixels read around each block: the overlap or the receptive radius, whichever is
    larger, rounded up to the model's stride so that block origins stay aligned."""
    reach = max(overlap, model.receptive_radius or 0)
    return math.ceil(reach / model.align) * model.align


def aligned_chunks(length: int, size: int, *, align: int = 1, minimum: int = 1) -> tuple[int, ...]:
    """Block sizes along an axis of ``length`` pixels: ``size`` rounded up to a multiple of
    ``align`` (so every block starts aligned), the last block merged into the one before it
    when it is shorter than ``minimum``.

    With ``minimum = tile_size - halo`` the last block with its halo is at least a tile:
    a narrower one would be reflection-padded beyond the raster's own padding and differ
    from a whole-raster run along the far border.
    """
    if size < 1:
        raise InvalidArgumentError(f"block size must be >= 1, got {size}")
    size = -(-max(size, minimum) // align) * align
    chunks = [size] * (length // size)
    rest = length - sum(chunks)
    if rest and chunks and rest < minimum:
        chunks[-1] += rest
    elif rest:
        chunks.append(rest)
    return tuple(chunks)


def _spans(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive blocks of these sizes."""
    edges = np.cumsum((0, *sizes)).tolist()
    return list(zip(edges[:-1], edges[1:], strict=True))


def predict_block(
    model: SegmentationModel,
    block: xr.DataArray,
    valid: np.ndarray,
    *,
    probabilities: bool = False,
    **tiling,
) -> np.ndarray:
    """Class ids (or probabilities) of one block of a scene, nodata outside ``valid``;
    ``tiling`` goes to :func:`core.tiling.predict_tiled`."""
    logits = predict_tiled(model.module, _model_input(model, block), align=model.align,
                           **tiling)  # fmt: skip
    return _finish(logits, valid, probabilities)


@contextmanager
def output_raster(
    output_path: str | os.PathLike,
    scene: xr.DataArray,
    model: SegmentationModel,
    *,
    probabilities: bool = False,
    cog: bool = False,
) -> Iterator[rasterio.io.DatasetWriter]:
    """A tiled GeoTIFF on the scene's grid to write predictions into block by block.

    It appears under ``output_path`` (converted to a COG with ``cog``) only when the block
    ends without an error; nothing is left behind otherwise.
    """
    count = len(model.classes) if probabilities else 1
    profile = dict(
        driver="GTiff", width=scene.sizes["x"], height=scene.sizes["y"], count=count,
        crs=scene.rio.crs, transform=scene.rio.transform(), tiled=True, blockxsize=512,
        blockysize=512, compress="deflate", dtype="float32" if probabilities else "uint8",
        nodata=np.nan if probabilities else CLASS_NODATA, BIGTIFF="IF_SAFER",
    )  # fmt: skip
    # GDAL's block cache defaults to 5 % of RAM; each block is read once here, so a big cache
    # would only grow RSS with the raster (up to 1.2 GB on a 24 GB machine).
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE), atomic_path(output_path) as final_tmp:
        staging = final_tmp.with_name(final_tmp.name + ".gtiff") if cog else final_tmp
        try:
            with rasterio.open(staging, "w", **profile) as dst:
                if probabilities:
                    dst.descriptions = tuple(model.classes)
                else:  # class names travel with the ids (read back by core.vectorize)
                    dst.update_tags(classes=json.dumps(list(model.classes)))
                yield dst
            if cog:
                rasterio.shutil.copy(staging, final_tmp, driver="COG", compress="deflate")
        finally:
            if cog:
                staging.unlink(missing_ok=True)


def predict_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model: SegmentationModel | str = "demo",
    aoi: gpd.GeoDataFrame | None = None,
    probabilities: bool = False,
    cog: bool = False,
    block_size: int = 1024,
    band_names: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **tiling,
) -> dict:
    """Predict a raster file block by block into a GeoTIFF (or COG); memory stays bounded.

    Each ``block_size`` block is read with a halo of ``max(overlap, receptive radius)``
    pixels, so blocks agree with a whole-raster run. ``tiling`` goes to
    :func:`core.tiling.predict_tiled`. Returns a summary: tiles, blocks, shape, seconds.
    """
    model = load_model(model)
    check_output_path(output_path)
    scene = open_raster(input_path, band_names=band_names)
    check_bands(model, scene)
    if aoi is not None:
        aoi = align_aoi(aoi, scene.rio.crs)
        scene = crop_to_aoi(scene, aoi)
    align = model.align
    if block_size % align:
        raise InvalidArgumentError(f"block_size must be a multiple of {align}, got {block_size}")
    halo = block_halo(model, tiling.get("overlap", 64))
    height, width = scene.sizes["y"], scene.sizes["x"]
    transform = scene.rio.transform()
    minimum = tiling.get("tile_size", 512) - halo
    rows, cols = (aligned_chunks(n, block_size, align=align, minimum=minimum)
                  for n in (height, width))  # fmt: skip
    blocks = [(r0, c0, r1, c1) for r0, r1 in _spans(rows) for c0, c1 in _spans(cols)]
    timer = TileTimer()
    start = time.perf_counter()
    any_valid = False
    with decoding(f"Raster file {str(input_path)!r}"), \
            output_raster(output_path, scene, model, probabilities=probabilities, cog=cog) as dst, \
            rasterio.open(input_path) as src:  # fmt: skip
        count, nodata = dst.count, dst.nodata
        # Read every block into one reused buffer: per-block allocations of varying size
        # fragmented the native heap (RSS grew with the raster's width).
        col_off, row_off = (round(v) for v in ~src.transform @ (transform.c, transform.f))
        side = max(*rows, *cols) + 2 * halo
        buffer = np.empty(scene.sizes["band"] * side * side, dtype=src.dtypes[0])
        for done, (r0, c0, r1, c1) in enumerate(blocks, start=1):
            hr0, hc0 = max(0, r0 - halo), max(0, c0 - halo)
            hr1, hc1 = min(height, r1 + halo), min(width, c1 + halo)
            h, w = hr1 - hr0, hc1 - hc0
            data = buffer[: scene.sizes["band"] * h * w].reshape(-1, h, w)
            src.read(window=Window(col_off + hc0, row_off + hr0, w, h), out=data)
            block = scene.isel(y=slice(hr0, hr1), x=slice(hc0, hc1)).copy(data=data)
            valid = valid_mask(block)
            if aoi is not None:
                valid &= ~geometry_mask(
                    aoi.geometry, out_shape=valid.shape, transform=block.rio.transform()
                )
            if valid.any():
                any_valid = True
                out = predict_block(model, block, valid, probabilities=probabilities,
                                    timing=timer.record, **tiling)  # fmt: skip
            else:  # nothing to predict here: write nodata, skip the model
                out = np.full((count, *valid.shape), nodata, dtype=dst.dtypes[0])
            out = out.reshape(count, *valid.shape)
            inner = out[:, r0 - hr0 : r0 - hr0 + r1 - r0, c0 - hc0 : c0 - hc0 + c1 - c0]
            dst.write(inner, window=Window(c0, r0, c1 - c0, r1 - r0))
            _release_freed_memory()
            if progress is not None:
                progress(done, len(blocks))
        if not any_valid:
            raise NoDataError(
                f"Raster {str(input_path)!r} has no valid pixels"
                f"{' inside the AOI' if aoi is not None else ''}: nothing to predict."
            )
    seconds = time.perf_counter() - start
    return {
        "output": str(Path(output_path)),
        "blocks": len(blocks),
        "tiles": len(timer.tile_seconds),
        "shape": [count, height, width],
        "seconds": seconds,
        "megapixels_per_s": height * width / 1e6 / seconds,
        **timer.summary(),
    }
