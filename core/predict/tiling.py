"""Tiled inference: overlapping tiles, batched, blended seam-free on the model's device.

Rules (docs/architecture.md, "Tiled inference rules"):

- the tile grid covers the raster with the fewest tiles; the last row/column is shifted back
  to end at the border, never a tile that is mostly padding;
- rasters smaller than a tile are padded by reflection and cropped back;
- blend weights taper only where a neighbouring tile overlaps, never at the raster's outer
  border; 2-D weights are the outer product of 1-D profiles;
- tiles go to the model in batches, outputs accumulate on the model's device, and the result
  is copied to the host once;
- a model that offers ``parallel_forward()`` (INT8 on ONNX Runtime) gets that many batches in
  flight on worker threads; outputs are still blended in tile order on the caller's thread.

Hand-written rather than MONAI's ``sliding_window_inference`` because that one tapers the
Gaussian to ~0 at the raster border, pads edge tiles, and keeps a full-scene FP32 buffer
per output without a crop mode; the benchmark ``benchmarks/tiling.py`` compares the two.
"""

from __future__ import annotations

import difflib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from scipy.special import erf

from seamline.core.errors import InvalidArgumentError
from seamline.core.models.modelio import eval_mode

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


class Blend(StrEnum):
    """How overlapping tile outputs are combined."""

    CROP = "crop"  # keep each tile's centre, discard the overlap margin
    LINEAR = "linear"
    COSINE = "cosine"
    GAUSSIAN = "gaussian"

    @classmethod
    def parse(cls, value: str | Blend) -> Blend:
        """A Blend from its name, suggesting the closest name on a typo."""
        if isinstance(value, Blend):
            return value
        names = [b.value for b in cls]
        if value not in names:
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(
                f"blend must be one of {', '.join(names)}, got {value!r}.{hint}"
            )
        return cls(value)


def axis_starts(length: int, tile: int, overlap: int, align: int = 1) -> np.ndarray:
    """Tile start offsets along one axis of ``length`` (>= ``tile``) pixels.

    Consecutive tiles overlap by at least ``overlap``; the last tile ends exactly at the border
    (shifted back). With ``align > 1`` (models that downsample by ``align``) every start is a
    multiple of ``align``; the caller pads the far side so that the last tile still fits.
    """
    span = length - tile
    if span <= 0:
        return np.zeros(1, dtype=np.int64)
    stride = max(align, ((tile - overlap) // align) * align)
    count = math.ceil(span / stride) + 1
    last = math.ceil(span / align) * align
    return np.minimum(np.arange(count, dtype=np.int64) * stride, last)


def _ramp(n: int, blend: Blend) -> np.ndarray:
    """1-D weights over an ``n``-pixel overlap, from 0 to 1; ramp and its mirror sum to 1.

    The outer quarter on each side stays 0 and the ramp spans the middle half: tile edges,
    where a convolution sees its zero padding, never contribute, so the blend is exact for a
    receptive-field radius up to ``n // 4`` (``n // 2`` for ``crop``).
    """
    margin = n // 4
    width = n - 2 * margin
    k = (np.arange(width, dtype=np.float64) + 0.5) / width
    if blend is Blend.LINEAR:
        ramp = k
    elif blend is Blend.COSINE:
        ramp = 0.5 - 0.5 * np.cos(np.pi * k)
    else:  # Gaussian: the CDF of a Gaussian centred in the ramp (sigma = ramp width / 6)
        ramp = 0.5 * (1.0 + erf((k - 0.5) * 6 / math.sqrt(2)))
    return np.concatenate([np.zeros(margin), ramp, np.ones(margin)])


def blend_profiles(starts: np.ndarray, tile: int, length: int, blend: Blend) -> np.ndarray:
    """1-D weight profiles, one row per tile along an axis: ``(n_tiles, tile)`` float32.

    Weights taper only inside the overlap with a neighbouring tile, so pixels at the raster's
    outer border keep full weight; every pixel's weights over its tiles sum to 1. ``crop``
    gives 0/1 weights: each pixel belongs to exactly one tile, split mid-overlap.
    """
    n = len(starts)
    profiles = np.ones((n, tile), dtype=np.float64)
    for i in range(n - 1):  # loops over tiles (a handful), never over pixels
        overlap = int(starts[i] + tile - starts[i + 1])
        if overlap <= 0:
            continue
        if blend is Blend.CROP:
            cut = overlap // 2
            profiles[i, tile - overlap + cut :] = 0.0
            profiles[i + 1, :cut] = 0.0
        else:
            ramp = _ramp(overlap, blend)
            profiles[i, tile - overlap :] *= ramp[::-1]
            profiles[i + 1, :overlap] *= ramp
    beyond = np.arange(tile)[None, :] + starts[:, None] >= length
    profiles[beyond] = 0.0  # padding past the far border never contributes
    return profiles.astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a ``height x width`` raster, with their blend weights.

    ``padded_shape`` is the raster size after reflection padding (for rasters smaller than a
    tile, or for alignment); tiles index the padded raster.
    """

    height: int
    width: int
    tile: int
    overlap: int
    blend: Blend
    align: int = 1

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InvalidArgumentError(
                f"the image must be at least 1 x 1 pixels, got {self.height} x {self.width}"
            )
        if self.tile < 1:
            raise InvalidArgumentError(f"tile_size must be >= 1, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise InvalidArgumentError(
                f"overlap must be >= 0 and < tile_size ({self.tile}), got {self.overlap}"
            )
        if self.align < 1 or self.tile % self.align:
            raise InvalidArgumentError(
                f"tile_size ({self.tile}) must be a multiple of the model's stride ({self.align})"
            )

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Height and width after padding: at least one tile, far side aligned."""
        return self._padded(self.height), self._padded(self.width)

    def _padded(self, length: int) -> int:
        if length <= self.tile:
            return self.tile
        return self.tile + math.ceil((length - self.tile) / self.align) * self.align

    @property
    def rows(self) -> np.ndarray:
        """Start row of each tile row."""
        return axis_starts(self.padded_shape[0], self.tile, self.overlap, self.align)

    @property
    def cols(self) -> np.ndarray:
        """Start column of each tile column."""
        return axis_starts(self.padded_shape[1], self.tile, self.overlap, self.align)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def origins(self) -> np.ndarray:
        """``(n_tiles, 2)`` (row, col) starts, row-major."""
        r, c = np.meshgrid(self.rows, self.cols, indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1)

    def profiles(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column weight profiles (see :func:`blend_profiles`)."""
        return (
            blend_profiles(self.rows, self.tile, self.height, self.blend),
            blend_profiles(self.cols, self.tile, self.width, self.blend),
        )

    def coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """Summed row and column profiles over the padded raster, ``(ph,)`` and ``(pw,)``.

        Weights are separable and tiles form a grid, so the accumulated 2-D weight is the
        outer product of these 1-D sums; zero only in the padding past the raster.
        """
        return tuple(
            _place(profiles, starts, length)
            for profiles, starts, length in zip(
                self.profiles(), (self.rows, self.cols), self.padded_shape, strict=True
            )
        )

    def weight_map(self) -> np.ndarray:
        """The accumulated blend weight per pixel, ``(height, width)``: a seam diagnostic."""
        cov_y, cov_x = self.coverage()
        return np.outer(cov_y[: self.height], cov_x[: self.width])


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to torch."""
    if str(device) != "auto":
        try:
            return torch.device(device)
        except RuntimeError:
            raise InvalidArgumentError(
                f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps."
            ) from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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

    Returns
    -------
    ``(C, H, W)`` float32 numpy array.
    """
    blend = Blend.parse(blend)
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if image.ndim != 3:
        raise InvalidArgumentError(
            f"image must be (bands, height, width), got shape {tuple(image.shape)}"
        )
    align = int(align if align is not None else getattr(model, "align", 1))
    _, height, width = image.shape
    grid = TileGrid(height, width, tile_size, overlap, blend, align)
    dev = pick_device(device)
    if channels_last is None:  # a model may say it takes NCHW only (e.g. ONNX Runtime)
        channels_last = getattr(model, "channels_last", True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(model, torch.nn.Module):
        model = place_module(model, dev, fmt)

    with torch.inference_mode():
        x = _reflect_pad(torch.as_tensor(image, device=dev, dtype=torch.float32),
                         grid.padded_shape)
        profiles = grid.profiles()
        wy, wx = (torch.from_numpy(p).to(dev) for p in profiles)
        origins = grid.origins()
        iy, ix = np.divmod(np.arange(len(origins)), len(grid.cols))
        support_y, support_x = (_support(p) for p in profiles)
        t = tile_size
        # Up to `calls` batches in flight: a model may offer a thread-safe forward that gains
        # from concurrent calls (ONNX Runtime: OnnxModule.parallel_forward). One buffer per batch
        # in flight, filled in the model's memory format: one copy per tile, no allocation per
        # batch. NaN (nodata) is zeroed per tile as it is copied, not on a copy of the scene.
        starts = range(0, len(origins), batch_size)
        out = None
        pending: deque[tuple[np.ndarray, Future]] = deque()

        def accumulate(idx: np.ndarray, done: tuple[torch.Tensor, float]) -> None:
            nonlocal out
            pred, seconds = done
            if timing is not None:  # calls in flight together: each adds its share to the run
                timing(seconds / calls, len(idx))
            if out is None:  # crop owns every pixel exactly once: nothing to zero
                alloc = torch.empty if blend is Blend.CROP else torch.zeros
                out = alloc((pred.shape[1], *grid.padded_shape), device=dev)
            for k, i in enumerate(idx):  # loops over the tiles of one batch, not pixels
                r, c = origins[i]
                (r0, r1), (c0, c1) = support_y[iy[i]], support_x[ix[i]]  # weight 0 outside
                target = out[:, r + r0 : r + r1, c + c0 : c + c1]
                if blend is Blend.CROP:  # 0/1 weights: copy the owned block, exact
                    target.copy_(pred[k, :, r0:r1, c0:c1])
                else:  # separable weight: outer product, fused multiply-add
                    weight = torch.outer(wy[iy[i], r0:r1], wx[ix[i], c0:c1])
                    target.addcmul_(pred[k, :, r0:r1, c0:c1], weight)
            if progress is not None:
                progress(int(idx[-1]) + 1, len(origins))

        with _forward_pool(model, len(starts)) as (submit, calls):
            buffers = [
                torch.empty((min(batch_size, len(origins)), x.shape[0], t, t), device=dev,
                            memory_format=fmt)
                for _ in range(calls)
            ]  # fmt: skip
            for n, start in enumerate(starts):
                if len(pending) == calls:  # its buffer is the one filled next
                    accumulate(pending[0][0], pending.popleft()[1].result())
                idx = np.arange(start, min(start + batch_size, len(origins)))
                tiles = buffers[n % calls][: len(idx)]
                for k, (r, c) in enumerate(origins[idx]):  # copied with NaN zeroed: one pass
                    torch.nan_to_num(x[:, r : r + t, c : c + t], nan=0.0, out=tiles[k])
                pending.append((idx, submit(tiles)))
            while pending:
                accumulate(pending[0][0], pending.popleft()[1].result())
        if blend is not Blend.CROP:
            # Separable weights on a grid: the accumulated weight is the outer product of the
            # 1-D sums, > 0 over the raster. They are 1 wherever at most two tiles overlap (the
            # profiles are a partition of unity there): then that division is skipped.
            cov_y, cov_x = (c[:n] for c, n in zip(grid.coverage(), (height, width), strict=True))
            for cov, shape in ((cov_y, (-1, 1)), (cov_x, (1, -1))):
                if not np.allclose(cov, 1.0, rtol=0.0, atol=1e-6):
                    out[:, :height, :width] /= torch.from_numpy(cov).to(dev).view(shape)
        return out[:, :height, :width].cpu().numpy()


@contextmanager
def _forward_pool(
    model: Callable[[torch.Tensor], torch.Tensor], batches: int
) -> Iterator[tuple[Callable[[torch.Tensor], Future], int]]:
    """``(submit, calls)``: ``submit(tiles)`` gives a future of the model's float32 NCHW
    output and the call's seconds, and ``calls`` is how many to keep in flight (at most
    ``batches``). A model with ``parallel_forward()`` (e.g.
    :meth:`seamline.core.models.onnx.OnnxModule.parallel_forward`) runs on that many threads
    when there are ``batches`` > 1 to share; any other runs in the caller's thread (a torch module's
    own intra-op threads already use the cores: two of them would only contend), as does a lone
    batch (a served tile: one call on all cores is the lowest latency).
    """
    parallel = batches > 1 and hasattr(model, "parallel_forward")
    forward, calls = model.parallel_forward() if parallel else (model, 1)
    calls = min(calls, batches)  # never more in flight than there are batches

    def run(tiles: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.inference_mode():  # thread-local: set again in each worker
            out = forward(tiles).float().contiguous()  # NCHW: rows of W are contiguous
        if out.is_cuda:  # kernels run asynchronously: the seconds are the GPU's, not a launch's
            torch.cuda.synchronize(out.device)
        return out, time.perf_counter() - start

    if calls == 1:

        def run_here(tiles: torch.Tensor) -> Future:
            future: Future = Future()
            future.set_result(run(tiles))
            return future

        yield run_here, 1
        return
    with ThreadPoolExecutor(calls, thread_name_prefix="seamline-tile") as pool:
        yield (lambda tiles: pool.submit(run, tiles)), calls


def _place(
    profiles: np.ndarray, starts: np.ndarray, length: int, combine: np.ufunc = np.add
) -> np.ndarray:
    """The 1-D profiles placed at their starts and combined (summed by default):
    ``(length,)`` float32."""
    total = np.zeros(length, dtype=np.float32)
    for profile, start in zip(profiles, starts, strict=True):  # one op per tile row/column
        span = slice(start, start + len(profile))
        total[span] = combine(total[span], profile)
    return total


_PLACING = threading.Lock()


def place_module(module: torch.nn.Module, device: torch.device | str,
                 fmt: torch.memory_format | None = None) -> torch.nn.Module:
    """``module`` in eval mode on ``device`` with its 4-D weights in ``fmt`` (``None``: as
    they are), converted in place at most once.

    ``Module.to`` re-assigns every parameter's ``.data``, which is not atomic: two threads
    converting one fresh module together (two dask worker threads sharing an unpickled model)
    left a weight with one layout's strides over the other's storage, and every later tile
    wrong. So the conversion holds a lock, and a module already placed is not touched (a
    thread may be in its forward).
    """
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors say
    with _PLACING:
        tensors = (*module.parameters(), *module.buffers())
        if not all(t.device == device for t in tensors):
            module.to(device)
        if fmt is not None and not all(t.dim() != 4 or t.is_contiguous(memory_format=fmt)
                                       for t in tensors):  # fmt: skip
            module.to(memory_format=fmt)
        if module.training:
            eval_mode(module)
    return module


def _support(profiles: np.ndarray) -> np.ndarray:
    """The ``[first, last + 1)`` range of non-zero weight of each profile (the owned range
    for ``crop``): nothing outside it needs to be read or written."""
    owned = profiles > 0
    first = owned.argmax(axis=1)
    last = owned.shape[1] - owned[:, ::-1].argmax(axis=1)
    return np.stack([first, last], axis=1)


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
