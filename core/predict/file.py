"""Predict a raster file larger than memory, block by block, into a tiled GeoTIFF or COG.

:func:`predict_file` walks the :class:`~seamline.core.predict.blocks.BlockGrid` in this
process, reading each block with its halo from disk; the dask path
(:func:`seamline.core.predict.distributed.predict_file_distributed`) computes the same blocks
on a cluster. Both write through :func:`output_raster` and :func:`write_blocks`, so peak
memory does not grow with the raster and a failed run leaves no file behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.windows import Window

from seamline.core.data.files import atomic_path, check_output_path, decoding
from seamline.core.data.io import open_raster, overview_resampling
from seamline.core.errors import InvalidArgumentError, NoDataError
from seamline.core.models.modelio import SegmentationModel, check_bands, load_model
from seamline.core.predict.blocks import (
    CLASS_NODATA,
    BlockGrid,
    TileTimer,
    block_array,
    predict_block,
    scene_meta,
)
from seamline.core.predict.plan import choose_overlap, choose_tile_size
from seamline.core.prepare.scene import align_aoi, crop_to_aoi, require_crs

__all__ = ["predict_file", "output_raster", "write_blocks", "open_for_prediction", "summary"]

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


def write_blocks(
    dst: rasterio.io.DatasetWriter,
    blocks: Iterable[tuple[int, int, np.ndarray]],
    *,
    total: int,
    source: str,
    aoi: bool,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``(row, col, out)`` blocks into ``dst`` as they come; raise
    :class:`~seamline.core.errors.NoDataError` naming ``source`` when none held a valid pixel."""
    any_valid = False
    for done, (row, col, out) in enumerate(blocks, start=1):
        dst.write(out, window=Window(col, row, out.shape[2], out.shape[1]))
        if not any_valid:
            any_valid = bool(np.isfinite(out).any() if out.dtype.kind == "f"
                             else (out != CLASS_NODATA).any())  # fmt: skip
        if progress is not None:
            progress(done, total)
    if not any_valid:
        raise NoDataError(
            f"Raster {source!r} has no valid pixels{' inside the AOI' if aoi else ''}: "
            "nothing to predict."
        )


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


def summary(output_path: str | os.PathLike, grid: BlockGrid, count: int, seconds: float) -> dict:
    """What a file prediction reports: output, blocks, shape, seconds, megapixels per second."""
    return {
        "output": str(Path(output_path)),
        "blocks": len(grid),
        "shape": [count, grid.height, grid.width],
        "seconds": seconds,
        "megapixels_per_s": grid.height * grid.width / 1e6 / seconds,
    }


def predict_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model: SegmentationModel | str,
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
    :func:`seamline.core.predict.tiling.predict_tiled`; without ``overlap``, the one that
    covers the model's receptive field (:func:`~.plan.choose_overlap`). Returns a
    summary: tiles, blocks, shape, seconds.
    """
    model = load_model(model)
    tiling["tile_size"] = choose_tile_size(model, tiling.get("tile_size"))
    tiling["overlap"] = choose_overlap(
        model, tiling["tile_size"], tiling.get("blend", "cosine"), tiling.get("overlap")
    )
    check_output_path(output_path, inputs=[input_path])
    if block_size % model.align:
        raise InvalidArgumentError(
            f"block_size must be a multiple of {model.align}, got {block_size}"
        )
    scene, aoi = open_for_prediction(input_path, model, aoi=aoi, band_names=band_names)
    height, width = scene.sizes["y"], scene.sizes["x"]
    grid = BlockGrid.for_model(height, width, model, block_size,
                               tile_size=tiling["tile_size"],
                               overlap=tiling["overlap"])  # fmt: skip
    geometries = None if aoi is None else list(aoi.geometry)
    meta = scene_meta(scene)
    timer = TileTimer()
    start = time.perf_counter()
    with decoding(f"Raster file {str(input_path)!r}"), \
            output_raster(output_path, scene, model, probabilities=probabilities, cog=cog) as dst, \
            rasterio.open(input_path) as src:  # fmt: skip
        transform = scene.rio.transform()
        col_off, row_off = (round(v) for v in ~src.transform @ (transform.c, transform.f))
        # Read every block into one reused buffer: per-block allocations of varying size
        # fragmented the native heap (RSS grew with the raster's width).
        side = max(*grid.rows, *grid.cols) + 2 * grid.halo
        buffer = np.empty(scene.sizes["band"] * side * side, dtype=src.dtypes[0])

        def blocks() -> Iterator[tuple[int, int, np.ndarray]]:
            for block in grid:
                h, w = block.read_shape
                data = buffer[: scene.sizes["band"] * h * w].reshape(-1, h, w)
                src.read(window=Window(col_off + block.hc0, row_off + block.hr0, w, h), out=data)
                out = predict_block(model, block_array(data, block, meta), aoi=geometries,
                                    probabilities=probabilities, timing=timer.record,
                                    **tiling)  # fmt: skip
                yield block.r0, block.c0, block.trim(out)

        write_blocks(dst, blocks(), total=len(grid), source=str(input_path),
                     aoi=aoi is not None, progress=progress)  # fmt: skip
        count = dst.count
    return {**summary(output_path, grid, count, time.perf_counter() - start),
            "tiles": len(timer.tile_seconds), **timer.summary()}  # fmt: skip
