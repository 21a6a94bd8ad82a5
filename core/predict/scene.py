"""Predict a scene held in memory (or a dask-backed one, lazily) on exactly its grid."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import xarray as xr

from seamline.core.data.io import valid_mask
from seamline.core.errors import NoDataError
from seamline.core.models.modelio import SegmentationModel, load_model
from seamline.core.predict.blocks import as_prediction, to_output
from seamline.core.predict.inputs import ModelInput
from seamline.core.predict.plan import choose_overlap, choose_tile_size
from seamline.core.predict.tiling import predict_tiled

__all__ = ["predict_scene"]


def predict_scene(
    model: SegmentationModel | torch.nn.Module | str,
    scene: xr.DataArray,
    *,
    probabilities: bool = False,
    tile_size: int | None = None,
    overlap: int | None = None,
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
    arguments are those of :func:`seamline.core.predict.tiling.predict_tiled`; the default
    ``tile_size`` is the model's (:func:`~.plan.choose_tile_size`) and the default
    ``overlap`` covers its receptive field (:func:`~.plan.choose_overlap`).

    A dask-backed scene (``open_raster(path, chunks=...)``) gives a lazy result computed chunk
    by chunk on the active dask scheduler: see
    :func:`seamline.core.predict.distributed.predict_chunked`.
    """
    if scene.chunks is not None:
        from seamline.core.predict.distributed import predict_chunked  # dask only when asked

        return predict_chunked(
            model, scene, probabilities=probabilities, tile_size=tile_size, overlap=overlap,
            blend=blend, batch_size=batch_size, device=device,
        )  # fmt: skip
    model = load_model(model)
    tile_size = choose_tile_size(model, tile_size)
    overlap = choose_overlap(model, tile_size, blend, overlap)
    prepare = ModelInput.for_scene(model, scene)
    valid = valid_mask(scene)
    if not valid.any():
        raise NoDataError("The scene has no valid pixels: nothing to predict.")
    logits = predict_tiled(  # normalised tile by tile, as predict_file: bit for bit the same
        model.module, np.asarray(scene.values), tile_size=tile_size, overlap=overlap,
        blend=blend, batch_size=batch_size, device=device, progress=progress, timing=timing,
        align=model.align, skip_empty=True, prepare=prepare,
    )  # fmt: skip
    return as_prediction(to_output(logits, valid, probabilities), scene, model)
