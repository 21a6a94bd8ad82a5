"""A drift profile gathered while a file is predicted: the scene read once, row by row.

:func:`~seamline.core.monitor.check.check` reads a scene whole (its samples, its histograms)
and predicts it again for the class shares. :class:`RowProfile` builds the same
:class:`~seamline.core.monitor.sampling.Part` per feature and the same class counts from the
rows a file prediction streams (raw values, valid pixels and class ids of each row range, in
order), so ``predict --baseline --db`` records the check that ``drift check`` would, exactly:
histograms and class counts are sums over the rows; the thinned samples are a regular grid
whose stride depends on the count of valid values of the whole scene, known only at the
end, so every stride still possible is kept as rows pass (the stride's bounds narrow as the
count grows and the rows left shrink: at most ~``sqrt(pixels x samples)`` values per
feature held).
"""

from __future__ import annotations

import math
import time

import numpy as np
import xarray as xr

from seamline.core.errors import NoDataError
from seamline.core.monitor.baseline import HIST_BINS, Baseline
from seamline.core.monitor.sampling import (
    KS_MIN_STRIDE,
    KS_SAMPLE,
    PROFILE_SAMPLES,
    feature_bands,
    feature_rows,
    histogram_bins,
    make_part,
    thin_stride,
    tile_ids,
)

__all__ = ["RowProfile"]

_TABLED = (np.dtype(np.uint8), np.dtype(np.uint16))
"""Raw band dtypes whose histogram bins come from a table of all their values."""


class _Thinned:
    """``thin(values, samples, min_stride)`` of a ``(height, width)`` feature given in rows."""

    def __init__(self, height: int, width: int, samples: int, min_stride: int) -> None:
        self.height, self.width, self.samples = height, width, samples
        self.min_stride, self.count = min_stride, 0
        self.kept: dict[int, list[np.ndarray]] = {}

    def _stride(self, count: int) -> int:
        return thin_stride(count, self.samples, self.min_stride)

    def add(self, a: int, rows: np.ndarray, count: int, kept: np.ndarray) -> None:
        """Rows ``[a, a + len(rows))`` of the feature, ``kept`` where it has a value
        (``count`` of them)."""
        self.count += count
        left = (self.height - a - len(rows)) * self.width
        low, high = self._stride(self.count), self._stride(self.count + left)
        for stride in [s for s in self.kept if not low <= s <= high]:
            del self.kept[stride]  # no longer possible
        for stride in range(low, high + 1):
            first = -a % stride  # the first row of this range on the stride's grid
            grid = rows[first::stride, ::stride][kept[first::stride, ::stride]]
            self.kept.setdefault(stride, []).append(grid)

    def result(self) -> np.ndarray:
        """The thinned values, as ``thin`` gives them for the whole feature."""
        kept = self.kept.get(self._stride(self.count), [])
        return np.concatenate(kept).astype(np.float64) if kept else np.empty(0)


class _Cells:
    """Histograms per drift-map cell (``size`` px squares, row-major, ``HIST_BINS`` each)
    of rows as they come, added to one ``(cells x HIST_BINS,)`` array.

    Counted one row of cells at a time: its keys (cell column x bins + bin, uint16 where they
    fit) and counts stay in cache; one bincount over a whole strip's cells was 1.7x slower on
    its own (the gathering is memory-bound)."""

    def __init__(self, shape: tuple[int, int], size: int) -> None:
        self.shape, self.size = shape, size
        self.row_bins = math.ceil(shape[1] / size) * HIST_BINS  # one row of cells
        dtype = np.uint16 if self.row_bins <= 2**16 else np.intp
        self.keys = (np.arange(shape[1]) // size * HIST_BINS).astype(dtype)

    def add(self, histogram: np.ndarray, a: int, bins: np.ndarray,
            mask: np.ndarray | None) -> None:  # fmt: skip
        """The ``bins`` of rows ``[a, ...)``: of every pixel, or of those where ``mask``
        (the rows' ``(rows, width)`` mask)."""
        if mask is not None:  # rows with nodata: each kept pixel's cell, from its index
            cells = tile_ids(self.shape, self.size, rows=(a, a + mask.shape[0]))[0]
            histogram += np.bincount(cells[mask] * HIST_BINS + bins, minlength=histogram.size)
            return
        rows = bins.reshape(-1, self.shape[1])
        r = 0
        while r < len(rows):
            cell_row = (a + r) // self.size
            end = min(len(rows), (cell_row + 1) * self.size - a)
            first = cell_row * self.row_bins
            counts = np.bincount((self.keys + rows[r:end]).ravel(), minlength=self.row_bins)
            histogram[first : first + self.row_bins] += counts
            r = end


class RowProfile:
    """What :func:`~seamline.core.monitor.sampling.scene_parts` and ``class_counts`` give for a
    scene, built from its rows in order: a file prediction's ``observe`` hook
    (:func:`~seamline.core.predict.file.predict_file` calls :meth:`start` with the scene it
    predicts, then :meth:`add` for each row range), then :meth:`parts` and ``counts``."""

    def __init__(self, baseline: Baseline, *, classes: tuple[str, ...]) -> None:
        self.baseline, self.classes = baseline, classes
        self.edges = {f.name: f.edges for f in baseline.features}
        self.scene: xr.DataArray | None = None
        self._tables: dict[tuple[str, str], np.ndarray] = {}

    def start(self, scene: xr.DataArray) -> None:
        """Begin a scene (``(band, y, x)``, read lazily: its grid and band names only)."""
        baseline = self.baseline
        self.scene, self.shape = scene, (scene.sizes["y"], scene.sizes["x"])
        self.order, self.index_pairs = feature_bands(scene, baseline.bands, baseline.indices)
        tiles = baseline.tiles if baseline.tiles is not None and baseline.tiles.matches(scene) \
            else None  # fmt: skip
        self.tile_size = tiles.size if tiles is not None else None
        names = [*baseline.bands, *baseline.indices]
        height, width = self.shape
        self.samples = {n: _Thinned(height, width, PROFILE_SAMPLES, 1) for n in names}
        self.ks = {n: _Thinned(height, width, KS_SAMPLE, KS_MIN_STRIDE) for n in names}
        self.n_tiles = tile_ids(self.shape, self.tile_size)[1] if self.tile_size else None
        self.cells = _Cells(self.shape, self.tile_size) if self.tile_size else None
        bins = HIST_BINS * (self.n_tiles or 1)
        self.histograms = {n: np.zeros(bins, dtype=np.int64) for n in names}
        self.counts = np.zeros(len(self.classes), dtype=np.int64)
        self.any_valid = False
        self.seconds = 0.0  # spent in add: the gathering's own share of a prediction

    def add(self, a: int, raw: np.ndarray, valid: np.ndarray, classes: np.ndarray) -> None:
        """Rows ``[a, a + rows)``: raw ``(bands, rows, width)`` values, their valid pixels and
        predicted class ids."""
        start = time.perf_counter()
        self._add(a, raw, valid, classes)
        self.seconds += time.perf_counter() - start

    def _add(self, a: int, raw: np.ndarray, valid: np.ndarray, classes: np.ndarray) -> None:
        every = bool(valid.all())  # the usual strip: no pixel to mask out
        self.any_valid |= every or bool(valid.any())
        count = valid.size if every else int(np.count_nonzero(valid))
        tabled = raw.dtype in _TABLED  # bands of small integers: kept as they are
        if tabled:
            for name, b in zip(self.baseline.bands, self.order, strict=True):
                band, table = raw[b], self._bins(name, raw.dtype)
                self.samples[name].add(a, band, count, valid)
                self.ks[name].add(a, band, count, valid)
                values = band.ravel() if every else band[valid]
                if self.cells is None:  # a histogram of the values, then of their bins
                    counts = np.bincount(values, minlength=table.size)
                    self.histograms[name] += np.bincount(
                        table, weights=counts, minlength=HIST_BINS).astype(np.int64)
                else:
                    self.cells.add(self.histograms[name], a, np.take(table, values),
                                   None if every else valid)  # fmt: skip
        for name, values in feature_rows(raw, valid, () if tabled else self.baseline.bands,
                                         [] if tabled else self.order,
                                         self.index_pairs):  # fmt: skip
            finite = np.isfinite(values)
            n = int(np.count_nonzero(finite))
            self.samples[name].add(a, values, n, finite)
            self.ks[name].add(a, values, n, finite)
            mask = None if n == finite.size else finite
            bins = histogram_bins(values.ravel() if mask is None else values[mask],
                                  self.edges[name])  # fmt: skip
            if self.cells is None:
                self.histograms[name] += np.bincount(bins, minlength=HIST_BINS)
            else:
                self.cells.add(self.histograms[name], a, bins, mask)
        # ids are uint8 with nodata 255, above every class id: counted, then cut off
        self.counts += np.bincount(classes.ravel(), minlength=self.counts.size)[: self.counts.size]

    def _bins(self, name: str, dtype: np.dtype) -> np.ndarray:
        """The histogram bin of every value of ``dtype`` for feature ``name`` (uint8): the bin
        of a pixel by lookup, faster than comparing each pixel, and the same bin (a
        uint8/uint16 value is exact in float32)."""
        key = (name, dtype.str)
        if key not in self._tables:
            every = np.arange(np.iinfo(dtype).max + 1).astype(np.float32)
            self._tables[key] = histogram_bins(every, self.edges[name])
        return self._tables[key]

    def parts(self) -> dict:
        """The :class:`~seamline.core.monitor.sampling.Part` of every feature."""
        if not self.any_valid:
            raise NoDataError("The scene has no valid pixels: check its nodata value.")
        return {name: make_part(name, self.samples[name].result(), self.ks[name].result(),
                                histogram, self.n_tiles)
                for name, histogram in self.histograms.items()}  # fmt: skip
