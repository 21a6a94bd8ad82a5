"""Predict a raster file larger than memory into a tiled GeoTIFF or COG.

:func:`predict_file` streams one tile grid over the raster in this process, a tile row at a
time (:mod:`seamline.core.predict.stream`): :class:`StripReader` reads the rows tiles need,
:class:`RowWriter` writes the finished ones. The dask path
(:func:`seamline.core.predict.distributed.predict_file_distributed`) runs bands of the same
grid's tile rows on a cluster (:mod:`seamline.core.predict.bands`) and writes through the same
:class:`RowWriter`. Both write through :func:`output_raster`, so peak memory does not grow
with the raster and a failed run leaves no file behind.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import rasterio
import rasterio.shutil
import torch
import xarray as xr
from affine import Affine
from rasterio.features import geometry_mask
from rasterio.windows import Window

from seamline.core.data.files import atomic_path, check_output_path, decoding
from seamline.core.data.io import open_raster, overview_resampling
from seamline.core.diskcache import model_fingerprint
from seamline.core.errors import InvalidArgumentError, NoDataError
from seamline.core.hardware import release_freed_memory
from seamline.core.models.modelio import SegmentationModel, check_bands, load_model
from seamline.core.predict.blocks import (
    CLASS_NODATA,
    TileTimer,
    to_output,
)
from seamline.core.predict.inputs import ModelInput
from seamline.core.predict.plan import choose_overlap, choose_tile_size
from seamline.core.predict.resume import StagedRows, first_tile_row, job_key
from seamline.core.predict.stream import pick_device, stream_tiles
from seamline.core.predict.tilegrid import Blend, TileGrid
from seamline.core.prepare.scene import align_aoi, crop_to_aoi, require_crs

if TYPE_CHECKING:  # geopandas loads only where an AOI is read (0.3 s of a start)
    import geopandas as gpd

__all__ = [
    "RowWriter",
    "StripReader",
    "open_for_prediction",
    "output_raster",
    "predict_file",
    "stage_rows",
    "write_staged",
]

GDAL_CACHE = 64 * 2**20  # bytes (rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64)


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
                else:  # class names travel with the ids (read back by seamline.core.vector)
                    dst.update_tags(classes=json.dumps(list(model.classes)))
                yield dst
            if cog:
                resampling = overview_resampling(continuous=probabilities)
                rasterio.shutil.copy(staging, final_tmp, driver="COG", compress="deflate",
                                     overview_resampling=resampling)  # fmt: skip
        finally:
            if cog:
                staging.unlink(missing_ok=True)


def open_for_prediction(
    input_path: str | os.PathLike,
    model: SegmentationModel,
    *,
    aoi: gpd.GeoDataFrame | None,
    band_names: list[str] | None,
    chunks: dict | None = None,
) -> tuple[xr.DataArray, gpd.GeoDataFrame | None]:
    """The input raster checked against ``model``'s bands and cropped to the ``aoi`` (given
    back in the raster's CRS)."""
    scene = open_raster(input_path, band_names=band_names, chunks=chunks)
    require_crs(scene, source=str(input_path))  # the output is placed on its grid
    check_bands(model, scene)
    if aoi is not None:
        aoi = align_aoi(aoi, scene.rio.crs)
        scene = crop_to_aoi(scene, aoi)
    return scene, aoi


def predict_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model: SegmentationModel | str,
    aoi: gpd.GeoDataFrame | None = None,
    probabilities: bool = False,
    cog: bool = False,
    band_names: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    prefetch: bool = True,
    resume: bool = False,
    observe: RowObserver | None = None,
    cache: bool = True,
    **tiling,
) -> dict:
    """Predict a raster file larger than memory into a GeoTIFF (or COG), one tile row at a
    time: the output equals :func:`~.scene.predict_scene` on the whole raster, bit for bit.

    One tile grid covers the raster (:mod:`seamline.core.predict.stream`); its tile rows are
    read as strips (the next one on a thread while the model runs, unless ``prefetch`` is
    off), normalised and padded as the in-memory path pads the whole scene, and finished rows
    are written a whole row of output blocks at a time. ``tiling`` goes to
    :func:`seamline.core.predict.tiling.predict_tiled`; without ``overlap``, the one that
    covers the model's receptive field (:func:`~.plan.choose_overlap`). ``progress`` is
    called as ``progress(done_tiles, total_tiles)``. ``resume`` stages finished rows beside
    the output so that a killed run, started again with ``resume``, computes only the rows
    not done (:mod:`~.resume`; the output is the same, bit for bit). Returns a summary: tiles,
    tile rows, shape, seconds (and, with ``resume``, the row it resumed from). ``observe``
    sees every row's raw values, valid pixels and output as they stream (e.g. a drift
    profile, :class:`~seamline.core.monitor.gather.RowProfile`: no second read). ``cache``
    False: the seam probe neither reads nor writes the disk cache (``--no-cache``).
    """
    model = load_model(model)
    tile_size = choose_tile_size(model, tiling.pop("tile_size", None))
    blend = Blend.parse(tiling.pop("blend", "cosine"))
    overlap = choose_overlap(model, tile_size, blend, tiling.pop("overlap", None), cache=cache)
    check_output_path(output_path, inputs=[input_path])
    scene, aoi = open_for_prediction(input_path, model, aoi=aoi, band_names=band_names)
    grid = TileGrid(scene.sizes["y"], scene.sizes["x"], tile_size, overlap, blend, model.align)
    timer = TileTimer()
    start = time.perf_counter()
    stream = {"skip_empty": True, "progress": progress, "timing": timer.record, **tiling}
    reading = partial(StripReader, input_path, scene, model, grid, aoi=aoi,
                      device=tiling.get("device"), prefetch=prefetch)  # fmt: skip
    writing = partial(output_raster, output_path, scene, model, probabilities=probabilities,
                      cog=cog)  # fmt: skip
    source, staged = str(input_path), None
    if observe is not None:
        if resume:
            raise InvalidArgumentError(
                "A resumed prediction does not see the rows done before it, so it cannot "
                "gather a drift profile: drop --resume or the drift check."
            )
        observe.start(scene)
    with decoding(f"Raster file {source!r}"):
        if not resume:
            with writing() as dst, reading(keep_raw=observe is not None) as reader:
                writer = RowWriter(dst, reader.valid, probabilities=probabilities,
                                   observe=observe and partial(_observed, observe, reader))
                run = stream_tiles(model.module, reader, grid, writer, prepare=reader.prepare,
                                   **stream)  # fmt: skip
                writer.close(source=source, aoi=aoi is not None)
        else:
            staged = stage_rows(output_path, input_path, model, grid, aoi=aoi,
                                probabilities=probabilities, band_names=band_names)
            run = _stream_staged(staged, model, grid, reading, probabilities, stream)
            with writing() as dst:
                write_staged(staged, RowWriter(dst, probabilities=probabilities), source, aoi)
            staged.remove()
    count = len(model.classes) if probabilities else 1
    seconds = time.perf_counter() - start
    return {
        "output": str(Path(output_path)), "tiles": run, "grid_tiles": len(grid),
        "tile_rows": len(grid.rows), "shape": [count, grid.height, grid.width],
        "seconds": seconds, "megapixels_per_s": grid.height * grid.width / 1e6 / seconds,
        **timer.summary(),
    } | ({"resumed_from_row": staged.resumed_from} if staged is not None else {})  # fmt: skip


def stage_rows(
    output_path: str | os.PathLike, input_path: str | os.PathLike, model: SegmentationModel,
    grid: TileGrid, *, aoi: gpd.GeoDataFrame | None, probabilities: bool,
    band_names: list[str] | None, runner: object = None,
) -> StagedRows:  # fmt: skip
    """The staged rows of this job (those of a killed run of the same job, if any).
    ``runner`` names how the rows are computed when that changes their floats (the bands of
    a ``--scheduler`` run group a shared row's sums by band): a job staged one way is not
    resumed another way."""
    weights = model_fingerprint(model.module, getattr(model.module, "onnx_bytes", None))
    parts = {"model": [model.name, model.precision, weights], "grid": [grid.tile, grid.overlap,
             grid.blend.value, grid.align], "probabilities": probabilities,
             "aoi": None if aoi is None else aoi.to_json(), "bands": band_names}  # fmt: skip
    if runner is not None:
        parts["runner"] = runner
    shape = (grid.height, grid.width)
    shape = (len(model.classes), *shape) if probabilities else shape
    dtype = np.dtype(np.float32 if probabilities else np.uint8)
    return StagedRows(output_path, job_key(input_path, parts), shape, dtype)


def _stream_staged(staged: StagedRows, model, grid, reading, probabilities, stream) -> int:
    """Stream the tile rows that reach the rows not staged yet into ``staged``; tiles run."""
    first = first_tile_row(grid.rows, grid.tile, staged.done)
    if first == len(grid.rows):
        return 0
    with reading() as reader:

        def sink(a: int, b: int, scores: torch.Tensor) -> None:
            staged.put(a, b, to_output(scores.cpu().numpy(), reader.valid(a, b), probabilities))

        return stream_tiles(model.module, reader, grid, sink, prepare=reader.prepare,
                            tile_rows=(first, len(grid.rows)), shared=_done_before,
                            **stream)  # fmt: skip


def _observed(observe: RowObserver, reader: StripReader, a: int, b: int, out: np.ndarray,
              valid: np.ndarray) -> None:  # fmt: skip
    """Show ``observe`` rows ``[a, b)``: their raw values (from ``reader``), valid pixels and
    output."""
    observe.add(a, reader.raw(a, b), valid, out)


def _done_before(a: int, b: int, scores: torch.Tensor) -> None:
    """Rows the resumed stream shares with tile rows it does not rerun: staged before."""


def write_staged(staged: StagedRows, writer: RowWriter, source: str, aoi) -> None:
    """The staged rows into the output, a row of its blocks at a time."""
    for a in range(0, staged.done, writer.block):
        b = min(a + writer.block, staged.done)
        out = np.asarray(staged.rows[..., a:b, :])
        valid = np.isfinite(out).all(0) if out.ndim == 3 else out != CLASS_NODATA
        writer.put(a, b, out, valid)
    writer.close(source=source, aoi=aoi is not None)


class RowObserver(Protocol):
    """What sees a file prediction's rows as they stream (``predict_file(observe=...)``)."""

    def start(self, scene: xr.DataArray) -> None:
        """The scene about to be predicted (read lazily)."""

    def add(self, a: int, raw: np.ndarray, valid: np.ndarray, out: np.ndarray) -> None:
        """Rows from ``a``: raw ``(bands, rows, width)`` values, valid pixels, output."""


class StripReader:
    """The source of the file path (:data:`~.stream.Source`): strips of tile rows read from
    the raster and padded by reflection exactly as the in-memory path pads the whole scene,
    in the raster's own dtype (``prepare``, a :class:`~.inputs.ModelInput`, normalises each
    tile as it is copied); the next strip is read on a thread while the model runs (GDAL
    decodes without the GIL). Use it as a context manager."""

    def __init__(
        self, input_path: str | os.PathLike, scene: xr.DataArray, model: SegmentationModel,
        grid: TileGrid, *, aoi: gpd.GeoDataFrame | None = None,
        device: str | torch.device | None = None, prefetch: bool = True,
        keep_raw: bool = False,
    ) -> None:  # fmt: skip
        self.grid, self.keep_raw = grid, keep_raw
        self.device = pick_device(device or "auto")
        self.geometries = None if aoi is None else list(aoi.geometry)
        self.src = rasterio.open(input_path)
        self.transform = scene.rio.transform()  # the scene may be cropped to an AOI
        self.col_off, self.row_off = (round(v) for v in ~self.src.transform
                                      @ (self.transform.c, self.transform.f))  # fmt: skip
        (ph, pw), h, w = grid.padded_shape, grid.height, grid.width
        # Padded row/column -> source row/column: numpy's reflection, as the in-memory path
        self.rowmap, self.colmap = (np.pad(np.arange(n), (0, p - n), mode="reflect")
                                    for n, p in ((h, ph), (w, pw)))  # fmt: skip
        self.prepare = ModelInput.for_scene(model, scene)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="seamline-read")
        self.prefetch = prefetch
        self.ahead: tuple[int, Future] | None = None
        # first row -> (end row, valid, raw values when kept)
        self.masks: dict[int, tuple[int, np.ndarray, np.ndarray | None]] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> StripReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.src.close()

    def __call__(self, a: int, b: int) -> torch.Tensor:
        """Padded rows ``[a, b)`` (see :data:`~.stream.Source`)."""
        if self.ahead is not None and self.ahead[0] == a:
            strip = self.ahead[1].result()
        else:  # on the reader's thread too: one thread uses the dataset at a time
            strip = self.pool.submit(self._read, a, b).result()
        self.ahead = None
        later = self.grid.rows[self.grid.rows > a]
        if self.prefetch and len(later):
            nxt = int(later[0])
            self.ahead = (nxt, self.pool.submit(self._read, nxt, nxt + self.grid.tile))
        return strip

    def valid(self, a: int, b: int) -> np.ndarray:
        """Valid pixels (inside the AOI) of raster rows ``[a, b)``, of a strip read before."""
        return self._rows(a, b, 1)

    def raw(self, a: int, b: int) -> np.ndarray:
        """Raw ``(bands, b - a, width)`` values of raster rows ``[a, b)``, of a strip read
        before (the reader made with ``keep_raw``)."""
        return self._rows(a, b, 2)

    def _rows(self, a: int, b: int, item: int) -> np.ndarray:
        with self.lock:
            for first in [f for f, kept in self.masks.items() if kept[0] <= a]:
                del self.masks[first]  # rows are asked for in order: never again
            first, kept = next((f, m) for f, m in self.masks.items() if f <= a and b <= m[0])
        rows = kept[item]
        return rows[..., a - first : b - first, :]

    def _read(self, a: int, b: int) -> torch.Tensor:
        rows = self.rowmap[a:b]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        w = self.grid.width
        # Raw values, in the raster's dtype (normalised tile by tile as they are copied).
        # No DataArray around them: xarray's cached .rio accessor makes a reference cycle,
        # which kept every strip alive until the garbage collector ran (+120 MB per tile row
        # at 20000 px wide).
        values = self.src.read(window=Window(self.col_off, self.row_off + lo, w, hi - lo))
        valid = self.prepare.valid(torch.from_numpy(values)).numpy()
        if self.geometries is not None:  # the strip's transform, as predict_block's
            transform = self.transform * Affine.translation(0, lo)
            valid &= ~geometry_mask(self.geometries, out_shape=valid.shape, transform=transform)
        with self.lock:
            self.masks[lo] = (hi, valid, values if self.keep_raw else None)
        if not np.array_equal(rows, np.arange(lo, hi)):  # reflected rows past the far border
            values = values[:, rows - lo]
        if len(self.colmap) != w:
            values = values[:, :, self.colmap]
        release_freed_memory()
        return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)


class RowWriter:
    """The sink of the file path (:data:`~.stream.Sink`): scores -> class ids (or
    probabilities), nodata outside the valid pixels, written one whole row of the output's
    blocks at a time (a compressed block written in two parts is compressed twice, and its
    first copy stays in the file as dead space)."""

    def __init__(self, dst: rasterio.io.DatasetWriter,
                 valid: Callable[[int, int], np.ndarray] | None = None,
                 *, probabilities: bool, observe: Callable | None = None) -> None:  # fmt: skip
        self.dst, self.valid, self.probabilities = dst, valid, probabilities
        self.observe = observe  # (a, b, out, valid) of each row range, as written
        self.block = dst.block_shapes[0][0]
        self.start = 0  # first row not written yet
        self.pending: list[np.ndarray] = []
        self.any_valid = False

    def __call__(self, a: int, b: int, scores: torch.Tensor) -> None:
        """Rows ``[a, b)`` (see :data:`~.stream.Sink`)."""
        valid = self.valid(a, b)
        out = to_output(scores.cpu().numpy(), valid, self.probabilities)
        if self.observe is not None:
            self.observe(a, b, out, valid)
        self.put(a, b, out, valid)

    def put(self, a: int, b: int, out: np.ndarray, valid: np.ndarray) -> None:
        """Rows ``[a, b)`` already converted (:func:`~.blocks.to_output`), with their valid
        pixels; rows come in order."""
        if a != self.start + sum(p.shape[1] for p in self.pending):
            raise RuntimeError(f"rows from {a} came out of order")
        self.any_valid |= bool(valid.any())
        self.pending.append(out.reshape(-1, b - a, out.shape[-1]))
        end = b if b == self.dst.height else b // self.block * self.block
        if end > self.start:
            rows = np.concatenate(self.pending, axis=1)
            self.dst.write(rows[:, : end - self.start],
                           window=Window(0, self.start, rows.shape[2], end - self.start))
            self.pending = [rows[:, end - self.start :]] if b > end else []
            self.start = end

    def close(self, *, source: str, aoi: bool) -> None:
        """Check the whole raster was written; one sentence naming ``source`` when it held no
        valid pixel (inside the ``aoi``)."""
        if not self.any_valid:
            raise NoDataError(
                f"Raster {source!r} has no valid pixels{' inside the AOI' if aoi else ''}: "
                "nothing to predict."
            )
        if self.start != self.dst.height:
            raise RuntimeError(f"rows {self.start}-{self.dst.height} were not written")
