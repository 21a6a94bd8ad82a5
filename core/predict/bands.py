"""Scale-out on one tile grid: a file's prediction cut into bands of tile rows, one task each.

The in-process stream (:mod:`.stream`) runs every tile of one grid once; cutting the raster
into blocks with halos, as ``map_overlap`` does, ran the halo's tiles again in every block
(144 tiles of 512 px at 4096^2 with blocks of 1024, where one grid needs 81). Here a task
is a band of whole tile rows of the same global grid (:func:`plan_bands`), read by the
worker from the file (each tile with its own rows: reading overlaps, computing does not):
the rows only its tiles touch come back finished (class ids or probabilities), the rows it
shares with the band above or below as undivided sums, which the client adds in band order
and divides (:class:`BandAssembler`). So every tile of the grid runs exactly once on the
cluster; the result equals the streamed file exactly with the crop blend, and within float
rounding with the weighted ones: a shared row's sum is grouped per band, ``(a + b) + (c + d)``
where the stream adds tile by tile, ``((a + b) + c) + d``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from seamline.core.models.modelio import SegmentationModel
from seamline.core.predict.blocks import to_output
from seamline.core.predict.file import StripReader, open_for_prediction
from seamline.core.predict.resume import first_tile_row
from seamline.core.predict.stream import band_rows, divide_rows, grid_divisors, stream_tiles
from seamline.core.predict.tilegrid import TileGrid

__all__ = ["BandAssembler", "BandResult", "bands_to_rerun", "plan_bands", "predict_band"]


def plan_bands(grid: TileGrid, rows: int) -> list[tuple[int, int]]:
    """``(first, stop)`` tile rows of each band: about ``rows`` pixel rows each (at least one
    tile row), and long enough that no tile row of one band reaches past the next band's
    first row (a shared row is shared by two bands only)."""
    starts, t = grid.rows, grid.tile
    stride = int(starts[1] - starts[0]) if len(starts) > 1 else t
    per_band = max(1, math.ceil(rows / stride))
    bands, first = [], 0
    while first < len(starts):
        stop = min(first + per_band, len(starts))
        reach = int(starts[first - 1]) + t if first else 0  # the band above's last row
        while stop < len(starts) and int(starts[stop]) < reach:
            stop += 1
        bands.append((first, stop))
        first = stop
    return bands


@dataclass
class BandResult:
    """What a band's task sends back: the rows it shares with the band above (``head``) and
    below (``tail``) as ``(first row, undivided sums, valid pixels)``, and the rows
    ``[body_start, body_stop)`` only it computes, finished (``body``; None when the band
    ran no tile: all nodata), and how many tiles it ran."""

    head: tuple[int, np.ndarray, np.ndarray] | None
    start: int
    body_start: int
    body_stop: int
    body: np.ndarray | None
    body_valid: np.ndarray | None
    tail: tuple[int, np.ndarray, np.ndarray] | None
    tiles: int


def predict_band(
    input_path: str | os.PathLike,
    band: tuple[int, int],
    *,
    model: SegmentationModel,
    grid: TileGrid,
    aoi=None,
    band_names: list[str] | None = None,
    probabilities: bool = False,
    batch_size: int = 1,
    device: str = "cpu",
) -> BandResult:
    """Tile rows ``band`` of ``grid`` over the file (``aoi`` and ``band_names`` as
    :func:`~.file.predict_file`'s): a worker's task."""
    scene, aoi = open_for_prediction(input_path, model, aoi=aoi, band_names=band_names)
    head_end, tail_start = band_rows(grid, band)
    shared: list[tuple[int, np.ndarray, np.ndarray]] = []
    body: list[np.ndarray] = []
    valids: list[np.ndarray] = []
    with StripReader(input_path, scene, model, grid, aoi=aoi, device=device) as reader:

        def finished(a: int, b: int, scores: torch.Tensor) -> None:
            valid = reader.valid(a, b)
            body.append(to_output(scores.cpu().numpy(), valid, probabilities))
            valids.append(valid)

        def partial(a: int, b: int, scores: torch.Tensor) -> None:
            shared.append((a, scores.cpu().numpy().copy(), reader.valid(a, b).copy()))

        tiles = stream_tiles(model.module, reader, grid, finished, skip_empty=True,
                             prepare=reader.prepare, batch_size=batch_size, device=device,
                             tile_rows=band, shared=partial)  # fmt: skip
    body_start = head_end if band[0] else 0
    return BandResult(
        _joined([s for s in shared if s[0] < head_end]), int(grid.rows[band[0]]), body_start,
        tail_start,
        np.concatenate(body, axis=-2) if body else None,  # (y, x) or (class, y, x)
        np.concatenate(valids) if valids else None,
        _joined([s for s in shared if s[0] >= tail_start]), tiles,
    )  # fmt: skip


def _joined(pieces: list[tuple[int, np.ndarray, np.ndarray]]):
    """Consecutive ``(first row, sums, valid)`` pieces as one, or None."""
    if not pieces:
        return None
    return (pieces[0][0], np.concatenate([p[1] for p in pieces], axis=1),
            np.concatenate([p[2] for p in pieces]))  # fmt: skip


def bands_to_rerun(bands: list[tuple[int, int]], grid: TileGrid, done: int) -> int:
    """The first of ``bands`` a run resumed after ``done`` finished rows must compute again:
    the first whose tiles reach a row not done. Every band after it reaches one too, and
    every band that adds to a row not done is rerun, so each such row gets all its sums."""
    first = first_tile_row(grid.rows, grid.tile, done)
    return next((n for n, (_, stop) in enumerate(bands) if stop > first), len(bands))


class BandAssembler:
    """Puts bands' results in band order (``put(a, b, out, valid)``: a
    :class:`~.file.RowWriter`'s, or rows staged for ``--resume``): each shared row range is
    the band above's tail plus the band below's head (either alone where the other band ran
    no tile: its pixels are all nodata), then divided and converted as the stream's rows are.
    A run resumed at band ``n`` (:func:`bands_to_rerun`) starts without the tail of band
    ``n - 1``: the rows that needs were finished before, and the staging skips them."""

    def __init__(self, put: Callable[[int, int, np.ndarray, np.ndarray], None], grid: TileGrid,
                 *, classes: int, probabilities: bool) -> None:  # fmt: skip
        self.put, self.grid, self.probabilities = put, grid, probabilities
        self.classes = classes
        self.divisors = grid_divisors(grid)
        self.tail: tuple[int, np.ndarray, np.ndarray] | None = None

    def add(self, result: BandResult) -> None:
        """The next band's result (bands come in order)."""
        if result.head is not None:
            a, scores, valid = result.head
            if self.tail is not None:
                scores = self.tail[1] + scores
            self._put_scores(a, scores, valid)
        elif self.tail is not None:
            self._put_scores(*self.tail)
        else:  # neither band ran a tile here
            self._put_nodata(result.start, result.body_start)
        if result.body is None:  # no tile ran: every pixel of the band is nodata
            self._put_nodata(result.body_start, result.body_stop)
        elif result.body_stop > result.body_start:
            self.put(result.body_start, result.body_stop, result.body, result.body_valid)
        self.tail = result.tail

    def _put_nodata(self, a: int, b: int) -> None:
        if b <= a:
            return
        nothing = np.zeros((b - a, self.grid.width), dtype=bool)  # every pixel nodata
        scores = np.zeros((self.classes, *nothing.shape), dtype=np.float32)
        self.put(a, b, to_output(scores, nothing, self.probabilities), nothing)

    def _put_scores(self, a: int, scores: np.ndarray, valid: np.ndarray) -> None:
        final = divide_rows(torch.from_numpy(scores), a, self.divisors).numpy()
        out = to_output(final, valid, self.probabilities)
        self.put(a, a + valid.shape[0], out, valid)
