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
    make_part,
    thin_stride,
    tile_ids,
)
from seamline.core.predict.blocks import CLASS_NODATA

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
        bins = HIST_BINS * (self.n_tiles or 1)
        self.histograms = {n: np.zeros(bins, dtype=np.int64) for n in names}
        self.counts = np.zeros(len(self.classes), dtype=np.int64)
        self.any_valid = False

    def add(self, a: int, raw: np.ndarray, valid: np.ndarray, classes: np.ndarray) -> None:
        """Rows ``[a, a + rows)``: raw ``(bands, rows, width)`` values, their valid pixels and
        predicted class ids."""
        self.any_valid |= bool(valid.any())
        ids = None
        if self.tile_size is not None:
            ids = tile_ids(self.shape, self.tile_size, rows=(a, a + valid.shape[0]))[0]
        count = int(np.count_nonzero(valid))
        tabled = raw.dtype in _TABLED  # bands of small integers: kept as they are
        if tabled:
            base = None if ids is None else ids[valid] * HIST_BINS  # one per strip, not band
            for name, b in zip(self.baseline.bands, self.order, strict=True):
                band, table = raw[b], self._bins(name, raw.dtype)
                self.samples[name].add(a, band, count, valid)
                self.ks[name].add(a, band, count, valid)
                if ids is None:  # a histogram of the values, then of their bins
                    values = np.bincount(band[valid], minlength=table.size)
                    self.histograms[name] += np.bincount(
                        table, weights=values, minlength=HIST_BINS).astype(np.int64)
                else:
                    flat = base + table[band[valid]]
                    self.histograms[name] += np.bincount(flat, minlength=self.histograms[name].size)
        for name, values in feature_rows(raw, valid, () if tabled else self.baseline.bands,
                                         [] if tabled else self.order,
                                         self.index_pairs):  # fmt: skip
            finite = np.isfinite(values)
            count = int(np.count_nonzero(finite))
            self.samples[name].add(a, values, count, finite)
            self.ks[name].add(a, values, count, finite)
            bins = np.searchsorted(self.edges[name][1:-1], values[finite], side="right")
            flat = bins if ids is None else ids[finite] * HIST_BINS + bins
            self.histograms[name] += np.bincount(flat, minlength=self.histograms[name].size)
        labelled = classes[classes != CLASS_NODATA]
        self.counts += np.bincount(labelled, minlength=self.counts.size)[: self.counts.size]

    def _bins(self, name: str, dtype: np.dtype) -> np.ndarray:
        """The histogram bin of every value of ``dtype`` for feature ``name``: the bin of a
        pixel by lookup, 4x faster than a search per pixel, and the same bin (a uint8/uint16
        value is exact in float32, where the search compares it)."""
        key = (name, dtype.str)
        if key not in self._tables:
            every = np.arange(np.iinfo(dtype).max + 1).astype(np.float32)
            self._tables[key] = np.searchsorted(self.edges[name][1:-1], every, side="right")
        return self._tables[key]

    def parts(self) -> dict:
        """The :class:`~seamline.core.monitor.sampling.Part` of every feature."""
        if not self.any_valid:
            raise NoDataError("The scene has no valid pixels: check its nodata value.")
        return {name: make_part(name, self.samples[name].result(), self.ks[name].result(),
                                histogram, self.n_tiles)
                for name, histogram in self.histograms.items()}  # fmt: skip
