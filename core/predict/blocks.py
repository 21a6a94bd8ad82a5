"""The block engine: a raster cut into blocks, each predicted with a halo, shared by every path.

In-process streaming (:func:`seamline.core.predict.file.predict_file`) and dask scale-out
(:func:`seamline.core.predict.distributed.predict_chunked`) lay a raster out as one
:class:`BlockGrid` and run each block through :func:`predict_block`: the block is read with a
halo of ``max(overlap, receptive radius)`` pixels (rounded up to the model's stride), tiled by
:func:`seamline.core.predict.tiling.predict_tiled`, and only its centre is kept
(:meth:`Block.trim`). So the two paths cannot drift apart. The model-facing helpers
(normalisation, class ids, the georeferenced result) live here too, for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from affine import Affine
from rasterio.features import geometry_mask

from seamline.core.errors import InvalidArgumentError
from seamline.core.hardware import release_freed_memory
from seamline.core.models.modelio import SegmentationModel
from seamline.core.predict.inputs import ModelInput
from seamline.core.predict.tiling import predict_tiled

__all__ = [
    "CLASS_NODATA",
    "Block",
    "BlockGrid",
    "TileTimer",
    "aligned_chunks",
    "as_prediction",
    "block_halo",
    "class_ids",
    "model_input",
    "predict_block",
    "to_output",
]

CLASS_NODATA = 255
"""The class id of nodata pixels in a class map."""


@dataclass
class TileTimer:
    """Model seconds per tile over a run: pass ``record`` as the ``timing`` callback of
    :func:`seamline.core.predict.tiling.predict_tiled` (a batch's call time / its tiles; with
    calls in flight together, the time each adds to the run)."""

    tile_seconds: list[float] = field(default_factory=list)

    def record(self, seconds: float, tiles: int) -> None:
        """Record a batch of ``tiles`` that took ``seconds``."""
        self.tile_seconds += [seconds / tiles] * tiles

    def summary(self) -> dict[str, float]:
        """Tile latency p50/p95 in ms, and the seconds the run spent in the model's calls
        (``forward_s``: with calls in flight together, each call's share)."""
        if not self.tile_seconds:
            return {"tile_ms_p50": float("nan"), "tile_ms_p95": float("nan"), "forward_s": 0.0}
        p50, p95 = np.percentile(self.tile_seconds, [50, 95]) * 1000
        return {"tile_ms_p50": float(p50), "tile_ms_p95": float(p95),
                "forward_s": float(sum(self.tile_seconds))}  # fmt: skip


def model_input(model: SegmentationModel, scene: xr.DataArray) -> np.ndarray:
    """Float32 ``(bands, y, x)`` in the model's band order, normalised with its statistics,
    NaN where nodata: :class:`~.inputs.ModelInput` over the whole scene."""
    prepare = ModelInput.for_scene(model, scene)
    return prepare(torch.from_numpy(np.asarray(scene.values))).numpy()


def to_output(logits: np.ndarray, valid: np.ndarray, probabilities: bool) -> np.ndarray:
    """Class ids (uint8, 255 = nodata) or softmax probabilities (float32, NaN = nodata)."""
    if probabilities:  # softmax over classes in numpy: its exp gives every pixel the same
        # result wherever it sits in the array (SIMD with masked tails); torch's computed a
        # strip's last pixels differently from the same pixels inside a whole scene (1 ulp)
        probs = logits - logits.max(axis=0)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=0)
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
    if any(stride < 0 for stride in logits.strides):  # torch takes positive strides only
        logits = np.ascontiguousarray(logits)
    scores = torch.from_numpy(logits)  # a strided view (a strip's rows) is not copied
    best = scores[0].clone()
    ids = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for c in range(1, scores.shape[0]):  # a loop over classes, not pixels
        ids.masked_fill_(scores[c] > best, c)
        torch.maximum(best, scores[c], out=best)
    return ids.numpy()


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
    return result.rio.write_nodata(np.nan if probabilities else CLASS_NODATA, encoded=False,
                                   inplace=True)  # not a deep copy of the whole prediction


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


@dataclass(frozen=True)
class Block:
    """One block: its own rows/columns ``[r0, r1) x [c0, c1)`` and, around them, the rows
    and columns read with its halo ``[hr0, hr1) x [hc0, hc1)`` (clipped at the raster)."""

    r0: int
    c0: int
    r1: int
    c1: int
    hr0: int
    hc0: int
    hr1: int
    hc1: int

    @property
    def read_shape(self) -> tuple[int, int]:
        """Rows and columns read, halo included."""
        return self.hr1 - self.hr0, self.hc1 - self.hc0

    def trim(self, out: np.ndarray) -> np.ndarray:
        """The block's own pixels of ``out`` (``(count, rows, cols)`` over the halo)."""
        top, left = self.r0 - self.hr0, self.c0 - self.hc0
        return out[:, top : top + self.r1 - self.r0, left : left + self.c1 - self.c0]


@dataclass(frozen=True)
class BlockGrid:
    """A raster of ``height`` x ``width`` cut into blocks of ``rows`` x ``cols`` sizes, each
    read with ``halo`` pixels around it."""

    height: int
    width: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    halo: int

    @classmethod
    def for_model(
        cls, height: int, width: int, model: SegmentationModel, block_size: int,
        *, tile_size: int = 512, overlap: int = 64,
    ) -> BlockGrid:  # fmt: skip
        """Blocks of ``block_size`` (rounded up to the model's stride) for ``model``'s tiling.

        Every block with its halo is at least a tile, and at least the halo (which dask's
        overlap needs): a narrower last block is merged into the one before it.
        """
        halo = block_halo(model, overlap)
        minimum = max(halo, tile_size - halo)
        rows, cols = (aligned_chunks(n, block_size, align=model.align, minimum=minimum)
                      for n in (height, width))  # fmt: skip
        return cls(height, width, rows, cols, halo)

    @property
    def shape(self) -> tuple[int, int]:
        """Blocks along y and x."""
        return len(self.rows), len(self.cols)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def block(self, i: int, j: int) -> Block:
        """The block in block-row ``i``, block-column ``j``."""
        r0, c0 = sum(self.rows[:i]), sum(self.cols[:j])
        r1, c1 = r0 + self.rows[i], c0 + self.cols[j]
        h = self.halo
        return Block(r0, c0, r1, c1, max(0, r0 - h), max(0, c0 - h),
                     min(self.height, r1 + h), min(self.width, c1 + h))  # fmt: skip

    def __iter__(self) -> Iterator[Block]:
        rows, cols = self.shape
        return (self.block(i, j) for i in range(rows) for j in range(cols))


def predict_block(
    model: SegmentationModel,
    values: np.ndarray,
    block: Block,
    *,
    transform: Affine,
    prepare: ModelInput,
    aoi: list | None = None,
    probabilities: bool = False,
    **tiling,
) -> np.ndarray:
    """``(count, y, x)`` class ids (or probabilities) of one block's raw ``values`` (read
    over ``block``, halo included, from a scene whose grid is ``transform``), nodata outside
    its valid pixels and outside the ``aoi`` geometries (in the scene's CRS).

    ``prepare`` (the scene's :class:`~.inputs.ModelInput`) normalises each tile as it is
    copied, as the tile-row stream does. No DataArray is made around the block: xarray's
    cached ``.rio`` accessor is a reference cycle that kept blocks alive until the garbage
    collector ran. A block with no valid pixel skips the model. ``tiling`` goes to
    :func:`seamline.core.predict.tiling.predict_tiled`.
    """
    valid = prepare.valid(torch.from_numpy(values)).numpy()
    if aoi is not None:
        offset = transform * Affine.translation(block.hc0, block.hr0)
        valid &= ~geometry_mask(aoi, out_shape=valid.shape, transform=offset)
    count = len(model.classes) if probabilities else 1
    if valid.any():
        logits = predict_tiled(model.module, values, align=model.align, prepare=prepare,
                               **tiling)  # fmt: skip
        out = to_output(logits, valid, probabilities).reshape(count, *valid.shape)
    else:  # nothing to predict here: nodata, and the model is skipped
        out = np.full((count, *valid.shape), np.nan if probabilities else CLASS_NODATA,
                      dtype=np.float32 if probabilities else np.uint8)  # fmt: skip
    release_freed_memory()
    return out
