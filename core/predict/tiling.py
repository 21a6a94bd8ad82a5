"""Tiled inference: overlapping tiles, batched, blended seam-free on the model's device.

Rules (docs/architecture.md, "Tiled inference rules"):

- the tile grid covers the raster with the fewest tiles; the last row/column is shifted back
  to end at the border, never a tile that is mostly padding;
- rasters smaller than a tile are padded by reflection and cropped back;
- blend weights taper only where a neighbouring tile overlaps, never at the raster's outer
  border; 2-D weights are the outer product of 1-D profiles;
- tiles go to the model in batches, in grid order; outputs accumulate on the model's device
  over the rows tiles still add to, and each finished row is copied to the host once
  (:mod:`seamline.core.predict.stream`, the engine shared with the file path);
- a model that offers ``parallel_forward()`` (INT8 on ONNX Runtime) gets that many batches in
  flight on worker threads; outputs are still blended in tile order on the caller's thread.

Hand-written rather than MONAI's ``sliding_window_inference`` because that one tapers the
Gaussian to ~0 at the raster border, pads edge tiles, and keeps a full-scene FP32 buffer
per output without a crop mode; the benchmark ``benchmarks/tiling.py`` compares the two.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from seamline.core.errors import InvalidArgumentError, NoDataError
from seamline.core.predict.inputs import ModelInput
from seamline.core.predict.stream import pick_device, place_module, stream_tiles
from seamline.core.predict.tilegrid import Blend, TileGrid, axis_starts, blend_profiles

__all__ = [
    "Blend",
    "TileGrid",
    "axis_starts",
    "blend_profiles",
    "predict_tiled",
    "pick_device",
    "place_module",
    "untiled",
    "seam_errors",
]


def predict_tiled(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray | torch.Tensor,
    *,
    tile_size: int = 512,
    overlap: int = 64,
    blend: str | Blend = "cosine",
    batch_size: int = 8,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
    timing: Callable[[float, int], None] | None = None,
    align: int | None = None,
    channels_last: bool | None = None,
    skip_empty: bool = False,
    prepare: ModelInput | None = None,
) -> np.ndarray:
    """Run ``model`` over ``image`` in overlapping tiles and blend the outputs seam-free.

    Parameters
    ----------
    model
        Maps ``(B, bands, t, t)`` float32 to ``(B, C, t, t)``; an ``nn.Module`` is moved to
        ``device`` and put in eval mode.
    image
        ``(bands, H, W)`` numpy array or tensor, any ``H, W >= 1``. NaN (nodata) is fed to the
        model as 0 (the baseline mean after z-score normalisation).
    tile_size, overlap
        Tile side and the minimum overlap between neighbouring tiles, ``0 <= overlap <
        tile_size``. For ``crop`` to be exact, half the overlap must cover the model's
        receptive-field radius; for the weighted blends, a quarter of it.
    blend
        ``crop``, ``linear``, ``cosine`` (default) or ``gaussian``.
    batch_size
        Tiles per forward pass.
    device
        ``auto`` (cuda, then mps, then cpu) or any torch device. Outputs accumulate there.
    progress
        Called as ``progress(done_tiles, total_tiles)`` after each batch.
    timing
        Called as ``timing(seconds, tiles)`` after each batch: its model call's seconds over
        the calls in flight together (what the batch adds to the run), and its tile count.
    align
        Tile starts are multiples of this (a U-Net that downsamples 8x needs 8 for tiled and
        untiled outputs to agree). Default: ``model.align`` if set, else 1.
    channels_last
        Feed tiles in channels-last memory format (faster convolutions on CPUs and on CUDA
        tensor cores); default: on unless the model has ``channels_last = False``.
    skip_empty
        Skip tiles whose input is all NaN: the pixels they cover are all nodata, so only
        their scores change (they stay 0, unless another tile covers them).
    prepare
        A :class:`~seamline.core.predict.inputs.ModelInput` that turns a tile of ``image``'s
        raw values into the model's input as it is copied; ``image`` then stays in its dtype.

    Returns
    -------
    ``(C, H, W)`` float32 numpy array.
    """
    blend = Blend.parse(blend)
    if image.ndim != 3:
        raise InvalidArgumentError(
            f"image must be (bands, height, width), got shape {tuple(image.shape)}"
        )
    align = int(align if align is not None else getattr(model, "align", 1))
    _, height, width = image.shape
    grid = TileGrid(height, width, tile_size, overlap, blend, align)
    dev = pick_device(device)
    x = torch.as_tensor(image, device=dev, dtype=None if prepare else torch.float32)
    x = _reflect_pad(x, grid.padded_shape)
    out: list[np.ndarray] = []

    def sink(a: int, b: int, scores: torch.Tensor) -> None:
        if not out:
            out.append(np.empty((scores.shape[0], height, width), dtype=np.float32))
        out[0][:, a:b] = scores.cpu().numpy()

    stream_tiles(model, lambda a, b: x[:, a:b], grid, sink, batch_size=batch_size, device=dev,
                 skip_empty=skip_empty, prepare=prepare, progress=progress, timing=timing,
                 channels_last=channels_last)  # fmt: skip
    if not out:
        raise NoDataError("The image has no valid (non-NaN) pixels: nothing to predict.")
    return out[0]


def _reflect_pad(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Pad ``(bands, h, w)`` on the far sides to ``shape`` by reflection (repeated as needed)."""
    _, h, w = x.shape
    if (h, w) == shape:
        return x
    # torch's reflect pad needs pad < size; numpy's repeats the reflection for any size.
    padded = np.pad(x.cpu().numpy(), ((0, 0), (0, shape[0] - h), (0, shape[1] - w)), "reflect")
    return torch.from_numpy(padded).to(x.device)


def untiled(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """The model on the whole raster in one forward pass: the reference tiles are judged by."""
    dev = pick_device(device)
    if isinstance(model, torch.nn.Module):
        model = place_module(model, dev)
    with torch.inference_mode():
        x = torch.nan_to_num(torch.as_tensor(image, dtype=torch.float32, device=dev), nan=0.0)
        return model(x[None])[0].float().cpu().numpy()


def seam_errors(tiled: np.ndarray, reference: np.ndarray, *, border: int = 8) -> dict[str, float]:
    """How far a tiled output is from the untiled one: overall, and along the outer border.

    ``border_rel_l2`` over the outer ``border`` pixels next to ``interior_rel_l2`` shows a
    band of degraded pixels along the raster edge (what a blend that tapers to zero there
    produces) as a ratio far above 1.
    """
    diff = tiled.astype(np.float64) - reference
    ring = np.ones(reference.shape[1:], dtype=bool)
    ring[border:-border, border:-border] = False

    def rel(mask: np.ndarray) -> float:
        norm = np.linalg.norm(reference[:, mask])
        return float(np.linalg.norm(diff[:, mask]) / norm) if norm else 0.0

    return {
        "max_abs": float(np.abs(diff).max()),
        "rel_l2": rel(np.ones_like(ring)),
        "border_rel_l2": rel(ring),
        "interior_rel_l2": rel(~ring),
    }
