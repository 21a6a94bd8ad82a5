"""The ``prepare`` stage: align CRS, clip to the AOI, handle nodata, normalise.

The AOI is reprojected to the raster's CRS (never the other way round), so the raster keeps
its pixel grid unless the user asks for a target CRS or resolution. Clipping reads only the
AOI's window from disk and masks in place, so peak memory stays near the output size.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.warp import calculate_default_transform, transform_bounds

from seamline.core.data.files import check_output_path, decoding
from seamline.core.data.grid import footprint, is_rotated, pixel_size, window
from seamline.core.data.io import (
    check_aoi,
    open_allowed,
    open_aoi,
    open_raster,
    valid_mask,
    write_raster,
)
from seamline.core.data.limits import InputBudget
from seamline.core.errors import (
    GeometryError,
    InvalidArgumentError,
    InvalidCRSError,
    MissingCRSError,
    NoDataError,
)
from seamline.core.prepare.bandstats import BandStats, fit_band_stats, normalise

if TYPE_CHECKING:  # geopandas loads only where an AOI is read (0.3 s of a start)
    import geopandas as gpd

__all__ = [
    "parse_crs",
    "parse_resampling",
    "align_aoi",
    "reproject_scene",
    "clip_to_aoi",
    "crop_to_aoi",
    "prepare",
    "prepare_file",
    "PrepareReport",
    "read_allowed_scene",
    "require_crs",
]

WRAPPED_PIXEL_RATIO = 16
"""A reprojection whose suggested grid holds under 1/16 of the source's pixels wraps around
the world (GDAL keeps the pixel count along the diagonal; a world-wide strip is mostly empty)."""


def parse_crs(text: str | int | CRS) -> CRS:
    """A pyproj CRS from ``EPSG:32633``, ``32633``, WKT or PROJ text; one sentence if unknown."""
    try:
        return CRS.from_user_input(text)
    except CRSError:
        raise InvalidCRSError(
            f"Unknown CRS {str(text)!r}: give an EPSG code such as 'EPSG:32633', WKT or PROJ text."
        ) from None


def parse_resampling(name: str | Resampling) -> Resampling:
    """A rasterio ``Resampling`` from its name, suggesting the closest name on a typo."""
    if isinstance(name, Resampling):
        return name
    names = [r.name for r in Resampling if not r.name.startswith("gauss")]
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InvalidArgumentError(
            f"Unknown resampling {name!r}; choose one of {', '.join(names)}.{hint}"
        )
    return Resampling[name]


def require_crs(scene: xr.DataArray, *, source: str | None = None) -> CRS:
    """The scene's CRS; one sentence naming ``source`` (default: the array's name) when it
    has none (nothing can be placed, clipped or written without one)."""
    if scene.rio.crs is None:
        raise MissingCRSError(
            f"Raster {source or scene.name or ''!r} has no CRS: assign one (e.g. `gdal_edit.py "
            "-a_srs EPSG:32633 FILE` or da.rio.write_crs()) and try again."
        )
    return scene.rio.crs


def _with_nodata(scene: xr.DataArray) -> xr.DataArray:
    """Give a scene a nodata value if it has none, for the pixels prepare masks: NaN for
    floats, the type's minimum for signed integers (0 is a valid elevation or backscatter),
    0 for unsigned ones (the optical convention, e.g. Sentinel-2's)."""
    if scene.rio.nodata is not None:
        return scene
    kind = scene.dtype.kind
    fill = np.nan if kind == "f" else np.iinfo(scene.dtype).min if kind == "i" else 0
    scene = scene.copy(deep=False)  # its own attributes, the same pixels (rioxarray's
    return scene.rio.write_nodata(fill, encoded=False, inplace=True)  # copy is deep)


def align_aoi(aoi: gpd.GeoDataFrame, crs: CRS | str) -> gpd.GeoDataFrame:
    """The AOI reprojected to ``crs`` (the raster's): vectors move, the pixel grid stays. An
    AOI whose coordinates do not project to finite ones (e.g. 1e30 degrees) is one sentence."""
    checked = check_aoi(aoi)
    projected = checked.to_crs(crs)
    if not np.isfinite(projected.total_bounds).all():
        raise GeometryError(
            f"The AOI (bounds {_fmt(checked.total_bounds)} in {checked.crs.to_string()}) does "
            f"not project into the raster's CRS {CRS.from_user_input(crs).to_string()}: check "
            "its coordinates and that its CRS is the one they are in."
        )
    return projected


def reproject_scene(
    scene: xr.DataArray,
    dst_crs: CRS | str | None = None,
    *,
    resolution: float | None = None,
    resampling: str | Resampling = "nearest",
) -> xr.DataArray:
    """Reproject a scene to ``dst_crs`` and/or ``resolution`` (in target CRS units).

    The grid is GDAL's suggestion for the scene's footprint (what ``gdalwarp`` and ``rio warp``
    choose), except that a rotated grid made north-up in its own CRS keeps its pixel size.

    Nodata pixels stay nodata (they do not bleed into neighbours for any resampling).
    """
    if resolution is not None and resolution <= 0:
        raise InvalidArgumentError(f"resolution must be > 0 in target CRS units, got {resolution}")
    src_crs = require_crs(scene)
    crs = parse_crs(dst_crs) if dst_crs is not None else src_crs
    scene = _with_nodata(scene)
    source = scene.rio.transform()
    if resolution is None and is_rotated(source) and crs == src_crs:  # north-up, same pixels
        resolution = min(pixel_size(source))
    transform, shape = _destination_grid(scene, src_crs, crs, resolution)
    with warnings.catch_warnings():  # rioxarray: a rotated transform cannot be recomputed
        warnings.filterwarnings("ignore", "Transform that is non-rectilinear")
        out = scene.rio.reproject(
            crs,
            transform=transform,
            shape=shape,
            resampling=parse_resampling(resampling),
            nodata=scene.rio.nodata,
        )
    out.attrs["long_name"] = scene.attrs.get("long_name", tuple(scene["band"].values.tolist()))
    return out


def _destination_grid(
    scene: xr.DataArray, src_crs: CRS, crs: CRS, resolution: float | None
) -> tuple[Affine, tuple[int, int]]:
    """GDAL's suggested output grid for the scene's true footprint (``rio.reproject`` takes
    its bounds from coordinates: a rotated raster lost half its pixels), refused in one sentence
    when it wraps around the world (a raster across the antimeridian in EPSG:3857 became a
    283 x 1 strip spanning 360 degrees)."""
    height, width = scene.sizes["y"], scene.sizes["x"]
    bounds = footprint(scene).bounds
    suggested = calculate_default_transform(src_crs, crs, width, height, *bounds)
    if suggested[1] * suggested[2] * WRAPPED_PIXEL_RATIO < width * height:
        west, _, east, _ = transform_bounds(src_crs, "EPSG:4326", *bounds)
        why = "crosses the antimeridian (longitude 180)" if west > east else "wraps around"
        raise GeometryError(
            f"The raster (bounds {_fmt(bounds)} in {src_crs.to_string()}) {why}, so in "
            f"{crs.to_string()} it would become a {suggested[1]} x {suggested[2]} px strip "
            "around the world: reproject it to a CRS local to it (e.g. its UTM zone) or keep "
            "its own CRS (leave the target CRS out)."
        )
    if resolution is None:
        return suggested[0], (suggested[2], suggested[1])
    transform, w, h = calculate_default_transform(src_crs, crs, width, height, *bounds,
                                                  resolution=resolution)  # fmt: skip
    return transform, (h, w)


def _window(scene: xr.DataArray, bounds: tuple[float, float, float, float], pad: int):
    """Row/column slices of the pixels touched by ``bounds`` (outward rounding, plus ``pad``)."""
    minx, miny, maxx, maxy = bounds
    inverse = ~scene.rio.transform()
    cols, rows = zip(*(inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)), strict=True)
    height, width = scene.sizes["y"], scene.sizes["x"]
    row0 = max(0, int(np.floor(min(rows))) - pad)
    row1 = min(height, int(np.ceil(max(rows))) + pad)
    col0 = max(0, int(np.floor(min(cols))) - pad)
    col1 = min(width, int(np.ceil(max(cols))) + pad)
    if row0 >= row1 or col0 >= col1:
        return None
    return slice(row0, row1), slice(col0, col1)


def crop_to_aoi(scene: xr.DataArray, aoi: gpd.GeoDataFrame, *, pad: int = 0) -> xr.DataArray:
    """The scene's window over the AOI's bounds (plus ``pad`` pixels), on the same grid.

    Lazily opened scenes stay lazy: nothing is read until the window's values are used.
    """
    aoi = align_aoi(aoi, require_crs(scene))
    window_slices = _window(scene, tuple(aoi.total_bounds), pad)
    outline = footprint(scene)
    if window_slices is None or not aoi.intersects(outline).any():
        raise GeometryError(
            f"The AOI (bounds {_fmt(aoi.total_bounds)} in {aoi.crs.to_string()}) does not "
            f"overlap the raster (bounds {_fmt(outline.bounds)}): choose an AOI over the scene."
        )
    rows, cols = window_slices
    return window(scene, rows, cols)


def _fmt(bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def clip_to_aoi(
    scene: xr.DataArray, aoi: gpd.GeoDataFrame, *, all_touched: bool = False
) -> xr.DataArray:
    """Crop a scene to the AOI's bounds and set pixels outside the AOI to nodata.

    The AOI is first reprojected to the scene's CRS. Only the AOI's window is read from disk
    for lazily opened scenes. ``all_touched`` keeps every pixel the AOI touches, not only
    those whose centre lies inside (GDAL's rasterization rule).
    """
    crs = require_crs(scene)
    aoi = align_aoi(aoi, crs)
    scene = _with_nodata(crop_to_aoi(scene, aoi))
    # rioxarray's rio.clip masks through xarray.where, which promotes integers to float64
    # (4x the memory of uint16): we rasterise the mask once and fill nodata in place instead.
    outside = geometry_mask(
        aoi.geometry,
        out_shape=(scene.sizes["y"], scene.sizes["x"]),
        transform=scene.rio.transform(),
        all_touched=all_touched,
    )
    data = np.array(scene.values)  # reads the window; owned, writable
    for band in data:
        np.copyto(band, scene.rio.nodata, where=outside, casting="unsafe")
    return scene.copy(data=data)


def read_allowed_scene(
    url: str,
    hosts: Iterable[str],
    *,
    budget: InputBudget,
    aoi: gpd.GeoDataFrame | None = None,
    surface: str = "dashboard",
) -> xr.DataArray:
    """A visitor's (or service client's) COG URL on an allowed host
    (:func:`~seamline.core.data.io.open_allowed`) read into memory: with an ``aoi``, only its
    window, pixels outside it nodata (as :func:`clip_to_aoi`). The ``budget`` bounds the
    window (or the whole raster) from the header, before a pixel is fetched."""
    with open_allowed(url, hosts, surface=surface) as lazy:
        part = crop_to_aoi(lazy, aoi) if aoi is not None else lazy
        if aoi is not None:
            source, fix = f"window of {url!r} inside the AOI", "draw a smaller AOI"
        else:
            source = f"raster at {url!r}"
            fix = "give an AOI to read a window of it, or use `seamline predict` for it"
        budget.check_scene(part, source=source, fix=fix)
        with decoding(f"The GeoTIFF at {url!r}", fix="check that the file is whole"):
            return clip_to_aoi(lazy, aoi) if aoi is not None else lazy.load()


def prepare(
    scene: xr.DataArray,
    *,
    aoi: gpd.GeoDataFrame | None = None,
    dst_crs: CRS | str | None = None,
    resolution: float | None = None,
    resampling: str | Resampling = "nearest",
    all_touched: bool = False,
    stats: BandStats | None = None,
    normalisation: str = "zscore",
) -> xr.DataArray:
    """Run the prepare stage on a scene and return the prepared ``(band, y, x)`` DataArray.

    Parameters
    ----------
    scene
        From :func:`seamline.core.data.io.open_raster` (lazily opened scenes are read only where
        needed).
    aoi
        Area of interest in any CRS; reprojected to the raster's CRS, then used to crop and mask.
    dst_crs, resolution, resampling
        Optionally reproject the raster too (target CRS, pixel size in its units, rasterio
        resampling name). Default: keep the source pixel grid exactly.
    all_touched
        Keep every pixel the AOI touches instead of pixel centres inside it.
    stats
        Baseline band statistics; when given the output is normalised float32 with NaN nodata.
    normalisation
        ``"zscore"`` or ``"percentile"`` (see :func:`seamline.core.prepare.bandstats.normalise`).
    """
    require_crs(scene)
    scene = _with_nodata(scene)
    reprojecting = dst_crs is not None or resolution is not None
    if aoi is not None and reprojecting:
        # Cut the source to the AOI (plus a margin for the resampling kernel) before warping.
        scene = crop_to_aoi(scene, aoi, pad=4)
    if reprojecting:
        scene = reproject_scene(scene, dst_crs, resolution=resolution, resampling=resampling)
    if aoi is not None:
        scene = clip_to_aoi(scene, aoi, all_touched=all_touched)
    if not valid_mask(scene).any():
        where = "inside the AOI" if aoi is not None else "in the raster"
        raise NoDataError(
            f"There are no valid pixels {where} (all are nodata = {scene.rio.nodata}): "
            "choose an AOI over valid data or check the raster's nodata value."
        )
    if stats is not None:
        scene = normalise(scene, stats, method=normalisation)
    return scene


@dataclass(frozen=True)
class PrepareReport:
    """What :func:`prepare_file` did, for the CLI's JSON output."""

    output: str
    crs: str
    shape: tuple[int, int, int]
    resolution: tuple[float, float]
    bounds: tuple[float, float, float, float]
    valid_fraction: float
    stats: str | None


def prepare_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    aoi_path: str | os.PathLike | None = None,
    aoi_layer: str | None = None,
    fit_stats: str | os.PathLike | None = None,
    stats_path: str | os.PathLike | None = None,
    band_names: list[str] | None = None,
    cog: bool = False,
    budget: InputBudget | None = None,
    **options,
) -> PrepareReport:
    """Prepare a raster file into a GeoTIFF/COG; the CLI's ``seamline prepare``.

    ``fit_stats`` fits baseline band statistics on the prepared scene, saves them there as
    JSON and normalises with them; ``stats_path`` normalises with existing statistics.
    Everything is validated before the output is written, and the output appears atomically.

    The scene (its AOI window, when there is an AOI) is held in memory, so its header is
    checked against ``budget`` (if given; the CLI gives the default) before a pixel is read.
    """
    if fit_stats is not None and stats_path is not None:
        raise InvalidArgumentError("give either fit_stats or stats_path, not both")
    check_output_path(output_path, inputs=[input_path])
    if fit_stats is not None:
        check_output_path(fit_stats, inputs=[input_path, output_path])
    scene = open_raster(input_path, band_names=band_names)
    aoi = open_aoi(aoi_path, layer=aoi_layer) if aoi_path is not None else None
    if budget is not None:
        window = crop_to_aoi(scene, aoi) if aoi is not None else scene
        where = " inside the AOI" if aoi is not None else ""
        budget.check_scene(window, source=f"raster {str(input_path)!r}{where}",
                           fix="clip it with --aoi, or lift the limit with --no-input-limits")
    stats = BandStats.load(stats_path) if stats_path is not None else None
    with decoding(f"Raster file {str(input_path)!r}"):  # pixels are read from here on
        prepared = prepare(scene, aoi=aoi, stats=stats, **options)
        if fit_stats is not None:
            stats = fit_band_stats(prepared)
            prepared = normalise(prepared, stats, method=options.get("normalisation", "zscore"))
        write_raster(prepared, output_path, driver="COG" if cog else "GTiff")
    if fit_stats is not None:
        stats.save(fit_stats)
    transform = prepared.rio.transform()
    return PrepareReport(
        output=str(Path(output_path)),
        crs=prepared.rio.crs.to_string(),
        shape=tuple(int(s) for s in prepared.shape),
        resolution=pixel_size(transform),
        bounds=tuple(float(b) for b in footprint(prepared).bounds),
        valid_fraction=float(valid_mask(prepared).mean()),
        stats=str(fit_stats or stats_path) if (fit_stats or stats_path) else None,
    )
