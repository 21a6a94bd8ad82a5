"""The class raster that polygons are made from: opened, checked, read window by window.

:func:`opened` gives a :class:`Raster` for a class-id raster (as
:func:`seamline.core.predict.scene.predict_scene` returns it or ``seamline predict`` writes it):
a window reader, its transform, CRS, nodata and class names. :func:`class_ids_of` turns class
ids or names into ids. The engine (:mod:`seamline.core.vector.seams`) reads the raster through
it one window at a time.
"""

from __future__ import annotations

import ast
import difflib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from seamline.core.data.files import decoding, existing_file, first_line
from seamline.core.errors import (
    BandMismatchError,
    InputFileError,
    InvalidArgumentError,
    MissingCRSError,
)

# No xarray or rioxarray at import time: `seamline vectorize` reads the file with rasterio,
# and those imports would be most of its memory. opened() imports xarray for a DataArray.
if TYPE_CHECKING:
    import xarray as xr
    from rasterio.crs import CRS

    Classes = xr.DataArray | str | os.PathLike

__all__ = ["Raster", "opened", "class_ids_of"]


@dataclass(frozen=True)
class Raster:
    """A validated ``(y, x)`` class raster: a window reader and what the polygons need."""

    read: Callable[[int, int, int, int], np.ndarray]  # rows r0:r1, columns c0:c1
    shape: tuple[int, int]
    dtype: np.dtype
    transform: Affine
    crs: CRS
    source: str
    names: tuple[str, ...]
    nodata: float | None

    @property
    def pixel_area(self) -> float:
        """The area of one pixel, in CRS units squared."""
        return abs(self.transform.determinant)



@contextmanager
def opened(classes: Classes) -> Iterator[Raster]:
    """The class raster, checked: a file read window by window through rasterio (no xarray:
    see the imports), or a DataArray sliced window by window."""
    if isinstance(classes, str | os.PathLike):
        path = existing_file(classes, "Raster")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # MissingCRSError says it
            try:
                dataset = rasterio.open(path)
            except RasterioError as exc:
                raise InputFileError(
                    f"Raster file {str(path)!r} could not be read ({first_line(exc)}): "
                    "pass a class GeoTIFF."
                ) from None

        def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
            with decoding(f"Raster file {str(path)!r}", fix="pass an uncorrupted class raster"):
                return dataset.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))

        with dataset:
            _check(str(classes), np.dtype(dataset.dtypes[0]), dataset.count, dataset.crs)
            tags = {**dataset.tags(1), **dataset.tags()}
            yield Raster(
                read,
                dataset.shape,
                np.dtype(dataset.dtypes[0]),
                dataset.transform,
                dataset.crs,
                str(classes),
                _class_names(tags.get("classes")),
                _nodata(dataset.nodata),
            )
        return
    import xarray as xr

    if not isinstance(classes, xr.DataArray):
        raise InvalidArgumentError(
            f"classes must be a class DataArray or the path of a class GeoTIFF, not a "
            f"{type(classes).__name__}."
        )
    source = str(classes.name or "the class array")
    bands = int(np.prod([classes.sizes[d] for d in classes.dims if d not in ("y", "x")]))
    _check(source, classes.dtype, bands, classes.rio.crs)
    values = classes.squeeze([d for d in classes.dims if d not in ("y", "x")], drop=True)
    yield Raster(
        lambda r0, r1, c0, c1: np.asarray(values[r0:r1, c0:c1].values),
        values.shape,
        values.dtype,
        classes.rio.transform(),
        classes.rio.crs,
        source,
        _class_names(classes.attrs.get("classes")),
        _nodata(classes.rio.nodata),
    )


def _check(source: str, dtype: np.dtype, bands: int, crs: CRS | None) -> None:
    """One band of integer class ids with a CRS, or one sentence that says what is wrong."""
    if dtype.kind not in "iub" or bands != 1:
        raise BandMismatchError(
            f"Raster {source!r} holds {dtype} values in {bands} band(s), but polygons need "
            "one band of integer class ids: pass a class raster (what `seamline predict` writes "
            "without --probabilities)."
        )
    if crs is None:
        raise MissingCRSError(
            f"Raster {source!r} has no CRS, so its polygons cannot be placed: set one "
            "(da.rio.write_crs() or gdal_edit.py -a_srs) and try again."
        )


def _nodata(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else value


def _class_names(value: object) -> tuple[str, ...]:
    """Class names from a ``classes`` attribute: a sequence, or its text in a GeoTIFF tag."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return ()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def class_ids_of(wanted: Sequence[int | str], raster: Raster) -> set[int]:
    """The class ids of ``wanted`` ids or names (names from the raster's ``classes``)."""
    ids = set()
    for item in wanted:
        if isinstance(item, str) and item in raster.names:
            ids.add(raster.names.index(item))
        elif isinstance(item, int | np.integer) or (isinstance(item, str) and item.isdigit()):
            ids.add(int(item))
        else:
            close = difflib.get_close_matches(str(item), raster.names, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else (
                    f"known classes: {', '.join(raster.names)}."
                    if raster.names
                    else "this raster names no classes, so give class ids."
                )
            )
            raise InvalidArgumentError(
                f"Class {item!r} is not a class of {raster.source!r}: {hint}"
            )
    return ids

