"""Raster and vector I/O: scenes as ``(band, y, x)`` DataArrays, AOIs as GeoDataFrames.

Reading and georeferencing are rioxarray's and geopandas' job; this module only adds what
Seamline's data model needs on top: band names as the ``band`` coordinate, a per-pixel
validity mask, one-sentence errors, and atomic writes (no partial file on failure).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rioxarray
import shapely
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile

from seamline.core.data.files import atomic_path, check_output_path, decoding
from seamline.core.data.files import existing_file as _existing_file
from seamline.core.data.files import first_line as _first_line
from seamline.core.data.grid import is_rotated
from seamline.core.data.limits import InputBudget
from seamline.core.data.remote import (
    check_allowed,
    is_remote,
    refuse_redirect,
    remote_raster,
    source_path,
    visitor_options,
)
from seamline.core.errors import (
    GeometryError,
    InputFileError,
    InvalidArgumentError,
    MissingCRSError,
)

if TYPE_CHECKING:  # geopandas loads only where an AOI is read (0.3 s of a start)
    import geopandas as gpd

__all__ = [
    "open_raster",
    "open_allowed",
    "open_aoi",
    "read_geotiff_bytes",
    "geotiff_bytes",
    "write_raster",
    "valid_mask",
    "band_names",
    "atomic_path",
    "check_aoi",
    "check_output_path",
    "decoding",
]

RASTER_DRIVERS = {"GTiff", "COG"}


def open_raster(
    path: str | os.PathLike,
    *,
    chunks: int | dict | bool | None = None,
    band_names: Sequence[str] | None = None,
) -> xr.DataArray:
    """Open any GDAL raster (GeoTIFF, COG, NetCDF, ...) as a ``(band, y, x)`` DataArray.

    Parameters
    ----------
    path
        The raster file.
    chunks
        ``None`` (default) opens lazily and reads on first access, without dask; anything else
        is passed to rioxarray and gives a dask-backed array (``True`` means GDAL's blocks).
    band_names
        Names for the bands. Default: the file's band descriptions, else ``band_1..band_N``.

    Returns
    -------
    DataArray with the band names as ``band`` coordinate and ``long_name`` attribute, CRS,
    transform and nodata through rioxarray (``da.rio.crs``, ``da.rio.transform()``,
    ``da.rio.nodata``). Values keep the file's dtype; use :func:`valid_mask` for validity.
    """
    remote = is_remote(path)
    path = remote_raster(path) if remote else _existing_file(path, "Raster")
    try:
        # cache=False: a lazily opened scene reads each window when asked and keeps no hidden
        # in-memory copy (xarray's cache doubled prepare's peak memory); call .load() to keep.
        with warnings.catch_warnings(), rasterio.open(path) as src:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said once it is used
            rotated = is_rotated(src.transform)  # a rotated grid has no 1-D coordinates
        da = rioxarray.open_rasterio(path, chunks=chunks, masked=False, cache=False,
                                     parse_coordinates=not rotated)  # fmt: skip
    except RasterioError as exc:
        fix = ("check the URL, and that its server answers HTTP range requests" if remote
               else "pass a GeoTIFF, COG or NetCDF file")  # fmt: skip
        raise InputFileError(
            f"Raster {'URL' if remote else 'file'} {str(path)!r} could not be read "
            f"({_first_line(exc)}): {fix}."
        ) from None
    if isinstance(da, list):  # NetCDF with groups: rioxarray gives one Dataset per group
        da = da[0]
    if isinstance(da, xr.Dataset):
        da = _dataset_to_bands(da, path)
    return _named_bands(da, band_names, path)


def _named_bands(da: xr.DataArray, band_names: Sequence[str] | None,
                 path: Path | str) -> xr.DataArray:  # fmt: skip
    """``da`` with a ``band`` dimension named after its bands (see :func:`open_raster`)."""
    if "band" not in da.dims:
        da = da.expand_dims("band")
    names = _resolve_band_names(da, band_names, path)
    da = da.assign_coords(band=list(names))
    da.attrs["long_name"] = tuple(names)
    da.name = da.name or source_path(path).stem  # a file's, a URL's
    return da


def _lazy_bands(dataset: rasterio.io.DatasetReader) -> xr.DataArray:
    """An open dataset as a lazy DataArray, read through it (only the driver that opened it,
    no second open by path); 1-D coordinates unless its grid is rotated."""
    return rioxarray.open_rasterio(dataset, masked=False, cache=False,
                                   parse_coordinates=not is_rotated(dataset.transform))  # fmt: skip


@contextmanager
def open_allowed(url: str, hosts: Iterable[str], *, surface: str = "dashboard") -> Iterator:
    """A visitor's (or a service client's) COG URL, checked
    (:func:`~seamline.core.data.remote.check_allowed`, no redirect) and opened lazily as a
    ``(band, y, x)`` DataArray by GDAL's GTiff driver only (a VRT could read server files or
    other hosts), with :func:`~seamline.core.data.remote.visitor_options`; read it inside the
    block. One sentence for anything that is not a GeoTIFF with a CRS."""
    url = check_allowed(url, hosts, surface=surface)
    refuse_redirect(url)
    path = f"/vsicurl/{url}"
    with rasterio.Env(**visitor_options(url)), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said below
        try:
            dataset = rasterio.open(path, driver="GTiff")
        except RasterioError as exc:
            raise InputFileError(
                f"URL {url!r} is not a GeoTIFF that can be read by range requests "
                f"({_first_line(exc)}): give the URL of a (Cloud-Optimized) GeoTIFF."
            ) from None
        with dataset:
            if dataset.crs is None:
                raise MissingCRSError(f"The GeoTIFF at {url!r} has no CRS: give one that has.")
            with _lazy_bands(dataset) as opened:
                yield _named_bands(opened, None, url)


def read_geotiff_bytes(
    data: bytes,
    *,
    budget: InputBudget | None = None,
    source: str = "upload",
    fix: str | None = None,
) -> xr.DataArray:
    """A GeoTIFF held in memory (e.g. an HTTP or dashboard upload) as a loaded
    ``(band, y, x)`` scene; ``fix`` ends a refusal by the ``budget`` (default: its own).

    The bytes are read through a rasterio ``MemoryFile`` by GDAL's GTiff driver only: nothing
    touches the disk, and nothing the bytes name is opened. Bytes that are not a GeoTIFF
    are an :class:`~core.errors.InputFileError`; a raster without a CRS a
    :class:`~core.errors.MissingCRSError`. With a ``budget``, too many bytes or values are a
    :class:`~core.errors.SizeLimitError` and a refused data type a
    :class:`~core.errors.DataTypeError`, raised from the header alone, before the pixels are
    decompressed.
    """
    if not data:
        raise InputFileError(f"The {source} is empty: use a GeoTIFF file.")
    limits = {"source": source} | ({"fix": fix} if fix else {})
    if budget is not None:
        budget.check_bytes(len(data), **limits)
    with MemoryFile(data) as memory, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # MissingCRSError says it
        try:
            # Only GDAL's GTiff driver may open it: a VRT (or any format that references
            # other files or URLs) would read server files or fetch URLs at open time.
            dataset = memory.open(driver="GTiff")
        except RasterioError:
            raise InputFileError(f"The {source} is not a GeoTIFF: use a GeoTIFF file.") from None
        with dataset:
            if dataset.crs is None:
                raise MissingCRSError(
                    f"The {source} has no CRS: write the GeoTIFF with its CRS (e.g. "
                    "gdal_translate -a_srs EPSG:32633 in.tif out.tif)."
                )
            if budget is not None:
                budget.check_dataset(dataset, **limits)
            # Closed once loaded: an open handle in xarray's file cache kept GDAL's
            # blocks of every upload (RSS grew ~15 MB per 64 requests).
            with decoding(f"The {source}", fix="use an uncorrupted GeoTIFF"):
                with _lazy_bands(dataset) as opened:
                    da = opened.load()
    return _named_bands(da, None, Path(source))


def _dataset_to_bands(ds: xr.Dataset, path: Path) -> xr.DataArray:
    """Stack the 2-D variables of a multi-variable NetCDF as bands, named after them."""
    variables = [name for name, var in ds.data_vars.items() if {"y", "x"} <= set(var.dims)]
    if not variables:
        raise InputFileError(
            f"Raster file {str(path)!r} has no variable on a (y, x) grid: pass a gridded file."
        )
    bands = [ds[name].squeeze(drop=True) for name in variables]
    da = xr.concat(bands, dim="band").assign_coords(band=variables)
    da.attrs["long_name"] = tuple(variables)
    da.rio.write_crs(ds.rio.crs, inplace=True)
    nodata = bands[0].rio.nodata
    if nodata is not None:
        da.rio.write_nodata(nodata, encoded=False, inplace=True)
    return da


def _resolve_band_names(
    da: xr.DataArray, band_names: Sequence[str] | None, path: Path
) -> tuple[str, ...]:
    count = da.sizes["band"]
    if band_names is not None:
        names = tuple(str(n) for n in band_names)
        if len(names) != count:
            raise InputFileError(
                f"Raster file {str(path)!r} has {count} bands but {len(names)} band names were "
                "given: pass one name per band."
            )
        _check_unique(names, f"The band names given for {str(path)!r}")
        return names
    described = da.attrs.get("long_name")
    if isinstance(described, str):  # rioxarray's one string for bands described alike
        described = (described,) * count
    if described is not None and len(described) == count and all(described):
        names = tuple(str(n) for n in described)
        _check_unique(names, f"The band descriptions of raster file {str(path)!r}")
        return names
    if described is not None and any(described):  # band_1..N would silently drop the names
        missing = ", ".join(str(i + 1) for i, d in enumerate(described) if not d)
        raise InputFileError(
            f"Raster file {str(path)!r} describes some bands but not band {missing}: name "
            "every band with --band-names (band_names= in Python), in the file's order."
        )
    coord = da["band"].values
    if coord.dtype.kind in "US" and len(set(coord.tolist())) == count:
        return tuple(str(n) for n in coord.tolist())
    return tuple(f"band_{i + 1}" for i in range(count))


def _check_unique(names: tuple[str, ...], what: str) -> None:
    """One sentence when a name is given to several bands: models pick bands by name, and
    renaming them ``band_1..N`` silently made the choice positional."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        shown = ", ".join(f"{n!r} ({names.count(n)} bands)" for n in repeated)
        raise InputFileError(
            f"{what} give one name to several bands ({shown}): name each band once with "
            "--band-names (band_names= in Python)."
        )


def band_names(da: xr.DataArray) -> tuple[str, ...]:
    """The band names of a scene, as stored in its ``band`` coordinate."""
    return tuple(str(n) for n in da["band"].values.tolist())


def valid_mask(da: xr.DataArray) -> np.ndarray:
    """Boolean ``(y, x)`` mask of valid pixels: any band differs from nodata and is finite.

    This follows GDAL's dataset mask for nodata values: a pixel is invalid only where every
    band is nodata (a dark pixel with one band at 0 is still data).
    """
    values = np.asarray(da.values) if da.ndim == 3 else np.asarray(da.values)[None]
    nodata = da.rio.nodata
    valid = np.zeros(values.shape[1:], dtype=bool)
    for band in values:  # per band, so the temporaries are (y, x) bools, not (band, y, x)
        band_valid = np.ones(band.shape, dtype=bool)
        if band.dtype.kind == "f":
            np.isfinite(band, out=band_valid)
        if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
            band_valid &= band != nodata
        valid |= band_valid
    return valid


def open_aoi(path: str | os.PathLike, *, layer: str | int | None = None) -> gpd.GeoDataFrame:
    """Open an area of interest from GeoJSON, Shapefile or GeoPackage (``layer``: which of
    a file's layers; a file of several needs it).

    The geometries must be non-empty, valid polygons with a CRS; anything else is a
    :class:`~core.errors.GeometryError` (or :class:`~core.errors.MissingCRSError`) that says
    which feature is wrong and how to fix it.
    """
    import geopandas as gpd

    path = _existing_file(path, "AOI")
    try:
        if layer is None:  # the first of several layers would be a silent guess
            layers = [str(name) for name in gpd.list_layers(path)["name"]]
            if len(layers) > 1:
                raise GeometryError(
                    f"AOI file {str(path)!r} has {len(layers)} layers ({', '.join(layers)}): "
                    "choose one with --aoi-layer NAME (layer= in Python), or keep one layer "
                    "in the file."
                )
        gdf = gpd.read_file(path, layer=layer)
    except GeometryError:
        raise
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        raise InputFileError(
            f"AOI file {str(path)!r} could not be read ({_first_line(exc)}): "
            "pass a GeoJSON, Shapefile or GeoPackage."
        ) from None
    return check_aoi(gdf, source=str(path))


def check_aoi(gdf: gpd.GeoDataFrame, *, source: str = "AOI") -> gpd.GeoDataFrame:
    """Validate an AOI GeoDataFrame: CRS present, polygons only, none empty or invalid."""
    if gdf.crs is None:
        raise MissingCRSError(
            f"AOI {source!r} has no CRS: save it with a CRS (GeoJSON is EPSG:4326 by definition)."
        )
    geoms = gdf.geometry
    if len(gdf) == 0 or geoms.isna().all() or geoms.is_empty.all():
        raise GeometryError(f"AOI {source!r} has no geometry: draw at least one polygon.")
    gdf = gdf[~(geoms.isna() | geoms.is_empty)]
    kinds = set(gdf.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise GeometryError(
            f"AOI {source!r} contains {', '.join(sorted(kinds - {'Polygon', 'MultiPolygon'}))} "
            "geometries: an AOI must be polygons."
        )
    invalid = ~gdf.is_valid.to_numpy()
    if invalid.any():
        first = int(np.flatnonzero(invalid)[0])
        reason = shapely.is_valid_reason(gdf.geometry.iloc[first])
        raise GeometryError(
            f"AOI {source!r} feature {first} is an invalid polygon ({reason}): repair it "
            "(e.g. shapely.make_valid or QGIS 'Fix geometries') and try again."
        )
    return gdf


def write_raster(
    da: xr.DataArray,
    path: str | os.PathLike,
    *,
    driver: str = "GTiff",
    compress: str = "deflate",
    blocksize: int = 512,
    **options,
) -> Path:
    """Write a scene or prediction as a tiled GeoTIFF or a COG, atomically.

    CRS, transform, nodata and band names (as band descriptions) are preserved. ``driver`` is
    ``"GTiff"`` or ``"COG"`` (Cloud Optimized GeoTIFF with overviews). Extra keyword options
    go to GDAL as creation options.
    """
    out, creation = _writable(da, driver, compress, blocksize, options)
    with atomic_path(path) as tmp:
        out.rio.to_raster(tmp, driver=driver, **creation)
    return Path(path)


def geotiff_bytes(
    da: xr.DataArray, *, driver: str = "GTiff", compress: str = "deflate", blocksize: int = 256
) -> bytes:
    """A scene or prediction as the bytes of a GeoTIFF (or COG) written in memory.

    The in-memory twin of :func:`write_raster` (through a rasterio ``MemoryFile``), e.g. for an
    HTTP response: CRS, transform, nodata and band names are kept the same way.
    """
    out, creation = _writable(da, driver, compress, blocksize, {})
    with MemoryFile() as memory:
        out.rio.to_raster(memory.name, driver=driver, **creation)
        return memory.read()


def _writable(
    da: xr.DataArray, driver: str, compress: str, blocksize: int, options: dict
) -> tuple[xr.DataArray, dict]:
    """``da`` ready for ``rio.to_raster`` (band dimension, band descriptions) and the GDAL
    creation options; one sentence for an unknown driver or a missing CRS."""
    if driver not in RASTER_DRIVERS:
        raise InvalidArgumentError(
            f"driver must be one of {sorted(RASTER_DRIVERS)}, got {driver!r}"
        )
    if da.rio.crs is None:
        raise MissingCRSError(
            "The array to write has no CRS: set one with da.rio.write_crs() before writing."
        )
    out = da if "band" in da.dims else da.expand_dims("band")
    if "long_name" not in out.attrs and out["band"].dtype.kind in "US":
        out = out.copy(deep=False)
        out.attrs["long_name"] = band_names(out)
    if isinstance(out.attrs.get("classes"), list | tuple):  # as predict writes its tag
        out = out.copy(deep=False)  # (rioxarray would write the list's Python repr)
        out.attrs["classes"] = json.dumps(list(out.attrs["classes"]))
    creation = {"compress": compress, "recalc_transform": _recalc_transform(out), **options}
    if driver == "GTiff":
        creation.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    else:
        creation.update(blocksize=blocksize)
        creation.setdefault("overview_resampling", overview_resampling("classes" not in da.attrs))
    return out, creation


def _recalc_transform(da: xr.DataArray) -> bool:
    """Whether the transform written is recomputed from the pixel centres (rioxarray's
    default) rather than the one stored on ``da``: only where they differ by more than
    rounding (a stale stored one). Recomputed, 0.0001 deg pixels were written as
    9.999999999999682e-05. A rotated grid's is the stored one: no coordinates can redo it."""
    stored = da.rio.transform()
    if is_rotated(stored):
        return False
    centres = da.rio.transform(recalc=True)
    return not stored.almost_equals(centres, precision=1e-6 * min(abs(centres.a), abs(centres.e)))


def overview_resampling(continuous: bool) -> str:
    """How a COG's overviews are computed: the mean for values (reflectance, probabilities),
    the most frequent id for class maps. GDAL's COG default, cubic, blends ids into ids absent
    from the block they summarise (~2 % of a class map's overview pixels)."""
    return "average" if continuous else "mode"
