"""One tile grid, streamed: the engine under every prediction path.

:func:`stream_tiles` runs the tiles of one :class:`~.tiling.TileGrid` over a raster in grid
order (row-major, in batches), taking the input as strips of one tile row each from a
``source``, and hands each output row to a ``sink`` as soon as no tile still to run overlaps
it. The in-memory :func:`~.tiling.predict_tiled` gives it slices of the padded image; the file
path (:func:`~.file.predict_file`) gives it strips read from disk. So a raster streamed from a
file equals the same raster predicted whole, bit for bit, and every tile of the grid runs
exactly once (blocks read with halos ran 144 tiles of 512 px at 4096^2 where one grid needs
81).

Memory held at once is set by a tile row, whatever the raster's height: the input strips a
batch spans (in the source's dtype: raw values when ``prepare`` normalises each tile), the
rows tiles still add to (``C x tile x padded width`` float32) and the batches in flight; the
formula is in docs/architecture.md, "The tile-row stream".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from seamline.core.errors import InvalidArgumentError
from seamline.core.models.modelio import eval_mode
from seamline.core.predict.inputs import ModelInput
from seamline.core.predict.tilegrid import Blend, TileGrid, support

__all__ = [
    "Sink",
    "Source",
    "band_rows",
    "divide_rows",
    "grid_divisors",
    "pick_device",
    "place_module",
    "stream_tiles",
]

Source = Callable[[int, int], torch.Tensor]
"""``source(a, b)``: padded rows ``[a, b)`` of the input, ``(bands, b - a, padded width)`` on
the model's device: the model's float32 input (NaN where there is no data), or raw values
that :func:`stream_tiles`'s ``prepare`` turns into it; asked for in increasing ``a``."""
Sink = Callable[[int, int, torch.Tensor], None]
"""``sink(a, b, scores)``: the final ``(C, b - a, width)`` float32 scores of raster rows
``[a, b)``, given in increasing order, every row once; a view valid during the call only
(its memory is reused: a sink copies what it keeps)."""


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to torch, one sentence
    when it is unknown or this machine does not have it."""
    if str(device) != "auto":
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise InvalidArgumentError(
                f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps."
            ) from None
        _check_present(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if _has_mps() else "cpu")


def _has_mps() -> bool:
    """Whether this machine has an Apple GPU torch can use."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _check_present(device: torch.device) -> None:
    """One sentence when this machine has no ``device`` (torch's own error was a traceback)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            has = f"{count} CUDA GPU(s), cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
            raise InvalidArgumentError(
                f"Device {str(device)!r} is not on this machine ({has}): use --device auto or "
                "cpu."
            )
    elif device.type == "mps" and not _has_mps():
        raise InvalidArgumentError(
            "Device 'mps' is not on this machine (no Apple GPU): use --device auto or cpu."
        )


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


def stream_tiles(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    source: Source,
    grid: TileGrid,
    sink: Sink,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    skip_empty: bool = False,
    prepare: ModelInput | None = None,
    progress: Callable[[int, int], None] | None = None,
    timing: Callable[[float, int], None] | None = None,
    channels_last: bool | None = None,
    tile_rows: tuple[int, int] | None = None,
    shared: Sink | None = None,
) -> int:
    """Run ``model`` over every tile of ``grid``, reading strips from ``source`` and giving
    finished rows to ``sink``; returns the tiles run. Arguments as
    :func:`~.tiling.predict_tiled`'s. ``prepare`` turns each tile's raw values into the
    model's input as it is copied into its batch (:meth:`.ModelInput.into`); without it the
    strips are the input. ``skip_empty`` skips the tiles without data (all nodata, or an input
    all NaN): every pixel they cover is nodata, so only nodata pixels' scores change (they
    stay 0). ``tile_rows=(r0, r1)`` runs only the tiles of those tile rows (a band of a job
    cut across workers, :mod:`.bands`): rows that tiles of other rows add to as well go to
    ``shared`` as undivided sums (to be added to the other band's and divided by
    :func:`divide_rows`), the others to ``sink``."""
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    dev = pick_device(device)
    if channels_last is None:  # a model may say it takes NCHW only (e.g. ONNX Runtime)
        channels_last = getattr(model, "channels_last", True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(model, torch.nn.Module):
        model = place_module(model, dev, fmt)
    r0, r1 = tile_rows or (0, len(grid.rows))
    strips, rows = _Strips(source, grid), _Rows(grid, sink, dev, (r0, r1), shared)
    first, last, t = r0 * len(grid.cols), r1 * len(grid.cols), grid.tile
    total = last - first

    def fill(i: int, slot: torch.Tensor) -> bool:
        """Copy tile ``i``'s input into ``slot`` (nodata as 0); whether it is to run."""
        raw = strips.tile(i)
        if prepare is not None:
            return prepare.into(raw, slot) or not skip_empty
        if skip_empty and _empty(raw):
            return False
        torch.nan_to_num(raw, nan=0.0, out=slot)
        return True

    run = done = 0
    batches_in_run = -(-total // batch_size)
    with torch.inference_mode(), _forward_pool(model, batches_in_run) as (submit, calls, depth):
        # One buffer per batch in flight, filled in the model's memory format: one copy per
        # tile, no allocation per batch.
        bands = prepare.bands if prepare is not None else strips.tile(first).shape[0]
        buffers = [torch.empty((min(batch_size, total), bands, t, t), device=dev,
                               memory_format=fmt) for _ in range(depth)]  # fmt: skip
        pending: deque[tuple[np.ndarray, Future]] = deque()

        def accumulate() -> None:
            nonlocal done
            idx, future = pending.popleft()
            pred, seconds = future.result()
            if timing is not None:  # calls in flight together: each adds its share to the run
                timing(seconds / calls, len(idx))
            rows.add(idx, pred)
            done = int(idx[-1]) + 1 - first
            if progress is not None:
                progress(done, total)

        batch: list[int] = []
        tiles, batches = buffers[0], 0
        for i in range(first, last):
            if fill(i, tiles[len(batch)]):
                batch.append(i)
            if len(batch) == len(tiles) or (batch and i + 1 == last):
                strips.release_before(i)
                pending.append((np.array(batch), submit(tiles[: len(batch)])))
                run, batches, batch = run + len(batch), batches + 1, []
                if len(pending) == depth:  # the next buffer is still in flight
                    accumulate()
                tiles = buffers[batches % depth]
        while pending:
            accumulate()
        rows.finish()
    if progress is not None and done < total:  # the last tiles were skipped
        progress(total, total)
    return run


def _empty(tile: torch.Tensor) -> bool:
    """Whether a tile's input is all NaN; its first band first (that one pass settles a tile
    with data, the usual one)."""
    return bool(tile[0].isnan().all()) and bool(tile.isnan().all())


def _batched(items: Iterable[int], size: int) -> Iterator[list[int]]:
    """Lists of ``size`` items (the last shorter); itertools.batched is Python 3.12+."""
    batch: list[int] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Strips:
    """Input strips of one tile row each, asked of the source when a tile first needs them
    and dropped once no tile left to copy does."""

    def __init__(self, source: Source, grid: TileGrid) -> None:
        self.source, self.grid = source, grid
        self.starts, self.cols = grid.rows, grid.cols
        self.held: dict[int, torch.Tensor] = {}

    def _strip(self, row: int) -> torch.Tensor:
        if row not in self.held:
            a = int(self.starts[row])
            self.held[row] = self.source(a, a + self.grid.tile)
        return self.held[row]

    def tile(self, i: int) -> torch.Tensor:
        """The input of tile ``i`` (row-major), a view into its strip."""
        row, col = divmod(i, len(self.cols))
        c = int(self.cols[col])
        return self._strip(row)[:, :, c : c + self.grid.tile]

    def release_before(self, i: int) -> None:
        """Drop the strips of the tile rows above tile ``i``'s."""
        row = i // len(self.cols)
        for old in [r for r in self.held if r < row]:
            del self.held[old]


class _Rows:
    """The output rows tiles still add to: ``C x tile x padded width`` starting at the current
    tile row, given to the sink and shifted down as each tile row is done. With ``tile_rows``
    a band of the grid: rows that tiles outside it add to go to ``shared``, undivided."""

    def __init__(self, grid: TileGrid, sink: Sink, device: torch.device,
                 tile_rows: tuple[int, int], shared: Sink | None) -> None:  # fmt: skip
        self.grid, self.sink, self.shared = grid, sink, shared
        self.starts, ncols = grid.rows, len(grid.cols)
        self.iy, self.ix = np.divmod(np.arange(len(grid)), ncols)
        self.col = np.tile(grid.cols, len(self.starts))
        profiles = grid.profiles()
        self.wy, self.wx = (torch.from_numpy(p).to(device) for p in profiles)
        self.support_y, self.support_x = (support(p) for p in profiles)
        self.divisors = grid_divisors(grid, device)
        self.device = device
        self.acc: torch.Tensor | None = None
        self.spare: torch.Tensor | None = None
        self.row, self.stop = tile_rows  # the tile row whose start is the accumulator's first
        self.head_end, self.tail_start = band_rows(grid, tile_rows)

    def add(self, idx: np.ndarray, pred: torch.Tensor) -> None:
        """Blend the outputs ``pred`` of tiles ``idx`` in, in tile order."""
        if self.acc is None:  # rows above the first tile run (all skipped) stay 0
            self.acc = torch.zeros((pred.shape[1], self.grid.tile, self.grid.padded_shape[1]),
                                   device=self.device)  # fmt: skip
        for k, i in enumerate(idx):  # loops over the tiles of one batch, not pixels
            self._finish(self.iy[i])
            c = self.col[i]
            (r0, r1), (c0, c1) = self.support_y[self.iy[i]], self.support_x[self.ix[i]]
            target = self.acc[:, r0:r1, c + c0 : c + c1]  # weight 0 outside the support
            if self.grid.blend is Blend.CROP:  # 0/1 weights: copy the owned block, exact
                target.copy_(pred[k, :, r0:r1, c0:c1])
            else:  # separable weight: outer product, fused multiply-add
                weight = torch.outer(self.wy[self.iy[i], r0:r1], self.wx[self.ix[i], c0:c1])
                target.addcmul_(pred[k, :, r0:r1, c0:c1], weight)

    def finish(self) -> None:
        """Give the sink every row left (after the last tile)."""
        if self.acc is None:
            return
        self._finish(self.stop)
        if self.stop < len(self.starts):  # the band's tail: the rows the next band adds to
            a = int(self.starts[self.stop])
            b = min(int(self.starts[self.stop - 1]) + self.grid.tile, self.grid.height)
            self._emit(a, b, self.acc[:, : b - a, : self.grid.width])

    def _emit(self, a: int, b: int, scores: torch.Tensor) -> None:
        """Rows ``[a, b)``: those other bands add to, undivided, to ``shared``; the others,
        divided by the blend's accumulated weight, to the sink."""
        pieces = ((a, min(b, self.head_end), False),
                  (max(a, self.head_end), min(b, self.tail_start), True),
                  (max(a, self.tail_start), b, False))  # fmt: skip
        for lo, hi, final in pieces:
            if hi > lo:
                piece = scores[:, lo - a : hi - a]
                if final:
                    self.sink(lo, hi, divide_rows(piece, lo, self.divisors))
                else:
                    self.shared(lo, hi, piece)

    def _finish(self, until: int) -> None:
        """Give the sink the rows of tile rows before ``until``: no later tile adds to them."""
        height, t = self.grid.height, self.grid.tile
        while self.row < until:
            a = int(self.starts[self.row])
            last = self.row + 1 == len(self.starts)
            b = height if last else min(int(self.starts[self.row + 1]), height)
            if b > a:
                self._emit(a, b, self.acc[:, : b - a, : self.grid.width])
            if not last:  # shifted into the spare accumulator (no new memory to fault in)
                shift = int(self.starts[self.row + 1]) - a
                moved = self.spare if self.spare is not None else torch.empty_like(self.acc)
                moved[:, : t - shift] = self.acc[:, shift:]
                moved[:, t - shift :] = 0
                self.acc, self.spare = moved, self.acc
            self.row += 1


def band_rows(grid: TileGrid, tile_rows: tuple[int, int]) -> tuple[int, int]:
    """``(head_end, tail_start)`` of the band of tile rows ``tile_rows``: its rows before
    ``head_end`` are also added to by the tile rows above it, those from ``tail_start`` by
    the tile rows below (``(0, height)`` for the whole grid)."""
    first, stop = tile_rows
    starts, height = grid.rows, grid.height
    head_end = min(int(starts[first - 1]) + grid.tile, height) if first else 0
    return head_end, int(starts[stop]) if stop < len(starts) else height


def grid_divisors(grid: TileGrid, device: torch.device | str = "cpu") -> list:
    """``[rows, cols]``: the accumulated blend weight along each axis of ``grid``, or None
    where it is 1. Separable weights on a grid: the accumulated weight is the outer product
    of the 1-D sums, > 0 over the raster, and 1 wherever at most two tiles overlap (the
    profiles are a partition of unity there): then that division is skipped."""
    return [
        None if grid.blend is Blend.CROP or np.allclose(cov[:n], 1.0, rtol=0.0, atol=1e-6)
        else torch.from_numpy(cov[:n]).to(device)
        for cov, n in zip(grid.coverage(), (grid.height, grid.width), strict=True)
    ]  # fmt: skip


def divide_rows(scores: torch.Tensor, a: int, divisors: list) -> torch.Tensor:
    """Summed ``(C, rows, width)`` scores of raster rows from ``a`` divided, in place, by the
    accumulated blend weight (:func:`grid_divisors`): the final scores."""
    div_y, div_x = divisors
    if div_y is not None:
        scores /= div_y[a : a + scores.shape[1]].view(-1, 1)
    if div_x is not None:
        scores /= div_x.view(1, -1)
    return scores


@contextmanager
def _forward_pool(
    model: Callable[[torch.Tensor], torch.Tensor], batches: int
) -> Iterator[tuple[Callable[[torch.Tensor], Future], int, int]]:
    """``(submit, calls, depth)``: ``submit(tiles)`` gives a future of the model's float32
    NCHW output and the call's seconds; ``calls`` run together and ``depth`` batches are kept
    in flight (at most ``batches``).

    A model with ``parallel_forward()`` (e.g.
    :meth:`seamline.core.models.onnx.OnnxModule.parallel_forward`) runs on that many threads
    when there are ``batches`` > 1 to share, with one batch more in flight: a call that
    finishes starts the waiting batch at once, while the caller blends and writes (AMD EPYC,
    2 cores, 4096^2 INT8: the sessions waited ~0.37 s each for the next tile while a finished
    tile row was written, predict 3.9-4.0 s; with the batch waiting 3.8 s). Any other model
    runs in the caller's thread (a torch module's own intra-op threads already use the
    cores: a call on a worker thread beside the caller's blending was no faster, its kernels
    slowed by as much as the overlap gained), as does a lone batch (a served tile: one call
    on all cores is the lowest latency).
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

        yield run_here, 1, 1
        return
    with ThreadPoolExecutor(calls, thread_name_prefix="seamline-tile") as pool:
        yield (lambda tiles: pool.submit(run, tiles)), calls, min(calls + 1, batches)
