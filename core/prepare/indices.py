"""Spectral indices computed from band names (NDVI, NDWI, NDBI).

Indices are computed on raw reflectance (before normalisation), as float32 with NaN where
the pixel is nodata or the denominator is zero.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from seamline.core.data.io import band_names, valid_mask
from seamline.core.errors import BandMismatchError, InvalidArgumentError

__all__ = [
    "INDICES",
    "available_indices",
    "index_bands",
    "normalized_difference",
    "spectral_index",
]

#: index name -> (a, b) for the normalised difference (a - b) / (a + b)
INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),  # McFeeters: open water
    "ndbi": ("swir1", "nir"),  # built-up
}

#: Common names -> Sentinel-2 band codes that mean the same band.
_ALIASES: dict[str, tuple[str, ...]] = {
    "blue": ("b02", "b2"),
    "green": ("b03", "b3"),
    "red": ("b04", "b4"),
    "nir": ("b08", "b8", "nir08"),
    "swir1": ("b11", "swir16"),
    "swir2": ("b12", "swir22"),
}


def _find_band(names: tuple[str, ...], common: str) -> int | None:
    lowered = [n.lower() for n in names]
    for candidate in (common, *_ALIASES.get(common, ())):
        if candidate in lowered:
            return lowered.index(candidate)
    return None


def available_indices(scene: xr.DataArray) -> list[str]:
    """The indices whose bands the scene has, by name."""
    names = band_names(scene)
    return [
        index
        for index, bands in INDICES.items()
        if all(_find_band(names, b) is not None for b in bands)
    ]


def index_bands(names: tuple[str, ...], name: str) -> tuple[int, int]:
    """The positions among ``names`` of index ``name``'s two bands (``(a - b) / (a + b)``);
    one sentence if a band is missing."""
    key = name.lower()
    if key not in INDICES:
        raise InvalidArgumentError(f"index must be one of {sorted(INDICES)}, got {name!r}")
    idx = [_find_band(names, b) for b in INDICES[key]]
    if None in idx:
        need = " and ".join(INDICES[key])
        raise BandMismatchError(
            f"{key.upper()} needs bands named {need}, but the scene has {list(names)}: "
            "name its bands (e.g. --band-names blue,green,red,nir; band_names= in Python)."
        )
    return idx[0], idx[1]


def normalized_difference(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` in float32, NaN where not ``valid`` or the sum is 0."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / total
    out[(total == 0) | ~valid] = np.nan
    return out


def spectral_index(scene: xr.DataArray, name: str = "ndvi") -> xr.DataArray:
    """A normalised-difference index of a ``(band, y, x)`` scene as a ``(y, x)`` DataArray."""
    key = name.lower()
    ia, ib = index_bands(band_names(scene), key)
    values = scene.values
    out = normalized_difference(values[ia], values[ib], valid_mask(scene))
    result = xr.DataArray(
        out,
        dims=("y", "x"),
        coords={"y": scene["y"], "x": scene["x"]},
        name=key,
        attrs={"long_name": key.upper()},
    )
    result.rio.write_crs(scene.rio.crs, inplace=True)
    result.rio.write_transform(scene.rio.transform(), inplace=True)
    return result.rio.write_nodata(np.nan, encoded=False)
