"""The tile grid: where tiles start, how their outputs blend, and the weight each pixel gets.

Rules (docs/architecture.md, "Tiled inference rules"):

- the tile grid covers the raster with the fewest tiles; the last row/column is shifted back
  to end at the border, never a tile that is mostly padding;
- rasters smaller than a tile are padded by reflection and cropped back;
- blend weights taper only where a neighbouring tile overlaps, never at the raster's outer
  border; 2-D weights are the outer product of 1-D profiles.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy.special import erf

from seamline.core.errors import InvalidArgumentError

__all__ = ["Blend", "TileGrid", "axis_starts", "blend_profiles", "support"]


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


def support(profiles: np.ndarray) -> np.ndarray:
    """The ``[first, last + 1)`` range of non-zero weight of each profile (the owned range
    for ``crop``): nothing outside it needs to be read or written."""
    owned = profiles > 0
    first = owned.argmax(axis=1)
    last = owned.shape[1] - owned[:, ::-1].argmax(axis=1)
    return np.stack([first, last], axis=1)
