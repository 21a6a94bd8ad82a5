"""Input budgets: how big an input may be before Seamline reads a pixel of it.

One :class:`InputBudget` bounds the bytes of an input, its size in values (width x height x
bands) and its data types. It is checked on a raster's header (a rasterio dataset, or a
lazily opened DataArray), so a small compressed or sparse file that declares a huge raster
(a "decompression bomb") is refused before GDAL decodes anything. The prediction service,
dashboard uploads and the CLI's in-memory paths all use it; see SECURITY.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from seamline.core.errors import DataTypeError, InvalidArgumentError, SizeLimitError

__all__ = ["InputBudget", "DEFAULT_BUDGET", "DEFAULT_DTYPES"]

DEFAULT_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
)
"""Real-valued pixel types of optical and radar products; complex and 64-bit integer
rasters are refused (no model here takes them, and their decoded size doubles)."""
RASTER_FIX = "send a smaller scene or split it into tiles"
MAX_VALUE_BYTES = 4
"""Decoded bytes per value the budget's ``max_pixels`` is sized for (float32)."""


@dataclass(frozen=True)
class InputBudget:
    """Limits on one input raster, checked before its pixels are read.

    Parameters
    ----------
    max_bytes
        Largest encoded input (an upload, a request body) in bytes. Default 64 MiB: a
        2048 x 2048 x 6 uint16 GeoTIFF is 48 MiB uncompressed.
    max_pixels
        Largest raster in values, width x height x bands. Default 4096 x 4096 x 8
        (134 million values: 256 MiB decoded as uint16, 512 MiB as float32). The decoded
        size is bounded too, at ``max_pixels`` float32 values: a float64 raster may hold half
        as many (a 27 KB sparse float64 4096 x 4096 x 8 file cost 2-3 GB of memory).
    dtypes
        Allowed pixel data types (numpy names). Default :data:`DEFAULT_DTYPES`.
    max_bands
        Most bands. Default 512: hyperspectral sensors have 200-450. Every band costs GDAL
        and the readers a fixed overhead, so a tiny file declaring 65535 bands of 8 x 8
        pixels (found by fuzzing) took 167 s to prepare while its values were within
        ``max_pixels``.
    """

    max_bytes: int = 64 * 2**20
    max_pixels: int = 4096 * 4096 * 8
    dtypes: frozenset[str] = DEFAULT_DTYPES
    max_bands: int = 512

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.max_bands < 1:
            raise InvalidArgumentError(
                f"The input budget must allow at least one byte, one pixel and one band, got "
                f"max_bytes={self.max_bytes}, max_pixels={self.max_pixels} and "
                f"max_bands={self.max_bands}."
            )
        unknown = sorted(name for name in self.dtypes if not _is_dtype(name))
        if unknown or not self.dtypes:
            raise InvalidArgumentError(
                f"Allowed data types must be numpy type names such as 'uint16', got "
                f"{unknown or 'none'}."
            )
        object.__setattr__(self, "dtypes", frozenset(str(np.dtype(n)) for n in self.dtypes))

    def check_bytes(self, size: int, *, source: str, fix: str = "send a smaller file") -> None:
        """Raise :class:`~core.errors.SizeLimitError` if ``size`` bytes exceed ``max_bytes``."""
        if size > self.max_bytes:
            raise SizeLimitError(
                f"The {source} is larger than the {self.max_bytes} bytes allowed: {fix}."
            )

    def check_raster(
        self,
        width: int,
        height: int,
        count: int,
        dtypes: Iterable[str],
        *,
        source: str,
        fix: str = RASTER_FIX,
    ) -> None:
        """Check a raster's declared shape and data types against the budget.

        Raises :class:`~core.errors.DataTypeError` for a type not in ``dtypes`` and
        :class:`~core.errors.SizeLimitError` for more than ``max_pixels`` values; ``fix``
        ends the sentence (what the caller can do about it).
        """
        kinds = sorted({str(d) for d in dtypes})
        refused = [d for d in kinds if d not in self.dtypes]
        if refused:
            raise DataTypeError(
                f"The {source} holds {', '.join(refused)} pixels, which are not allowed "
                f"(allowed: {', '.join(sorted(self.dtypes))}): convert it to one of those."
            )
        if count > self.max_bands:
            raise SizeLimitError(
                f"The {source} declares {count:,} bands, more than the {self.max_bands} "
                f"allowed: {fix}."
            )
        values = width * height * count
        itemsize = max(np.dtype(d).itemsize for d in kinds) if kinds else 1
        decoded, allowed = values * itemsize, self.max_pixels * MAX_VALUE_BYTES
        if values > self.max_pixels or decoded > allowed:
            raise SizeLimitError(
                f"The {source} is {width} x {height} pixels x {count} bands ({values:,} "
                f"values, {decoded / 2**20:,.1f} MiB decoded), more than the "
                f"{self.max_pixels:,} values or {allowed / 2**20:,.0f} MiB allowed: {fix}."
            )

    def check_dataset(self, dataset, *, source: str, fix: str = RASTER_FIX) -> None:
        """Check an open rasterio dataset's header (nothing is decoded)."""
        self.check_raster(dataset.width, dataset.height, dataset.count, dataset.dtypes,
                          source=source, fix=fix)  # fmt: skip

    def check_scene(
        self, scene: xr.DataArray, *, source: str, streaming: bool = False, fix: str = RASTER_FIX
    ) -> None:
        """Check a lazily opened ``(band, y, x)`` scene (e.g. from
        :func:`seamline.core.data.io.open_raster`) before its values are loaded.

        With ``streaming`` (a reader that holds one window at a time, such as
        :func:`seamline.core.predict.file.predict_file`) the bound applies to the file's internal
        block (tile or strip: rioxarray's ``preferred_chunks``), the unit GDAL decodes whole to
        serve any window of it, instead of the whole raster.
        """
        sides = {"x": scene.sizes["x"], "y": scene.sizes["y"]}
        if streaming:
            sides.update(scene.encoding.get("preferred_chunks", {}))
        self.check_raster(sides["x"], sides["y"], scene.sizes.get("band", 1),
                          [str(scene.dtype)], source=source, fix=fix)  # fmt: skip


def _is_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except TypeError:
        return False
    return True


DEFAULT_BUDGET = InputBudget()
"""The budget used by the service, dashboard uploads and the CLI unless configured."""
