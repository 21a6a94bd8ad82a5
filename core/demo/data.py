"""Embedded demo data: a real Sentinel-2 scene and synthetic scenes, no download at run time.

The real scene is the Sentinel-2 L2A sample (6 bands, 200 x 300 px, 10 m, EPSG:32719) that
the ``xarray-spatial`` 0.5.3 wheel ships in ``xrspatial/datasets/sentinel-2/`` (MIT licence),
one netCDF3 file per band (the two SWIR bands at their native 20 m). It is located through
the import system without importing ``xrspatial`` itself (whose import compiles numba
kernels we do not need).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import geopandas as gpd
import numpy as np
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from shapely.geometry import Polygon

from seamline.core.data.files import atomic_path
from seamline.core.data.io import write_raster
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InputFileError, OutputPathError

__all__ = [
    "SENTINEL2_BANDS",
    "sentinel2_sample",
    "sentinel2_aoi",
    "write_demo_data",
    "TimeseriesScene",
    "eo_timeseries",
]

SENTINEL2_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")


def _sentinel2_folder() -> Path:
    spec = importlib.util.find_spec("xrspatial")
    if spec is None or not spec.submodule_search_locations:
        raise InputFileError(
            "The Sentinel-2 demo scene ships with xarray-spatial 0.5.3, which is not installed: "
            "run `pip install xarray-spatial==0.5.3`."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "sentinel-2"


def _read_band(path: Path) -> xr.DataArray:
    """One netCDF3 band file as a georeferenced (y, x) DataArray.

    The files were written by xarray's old ``open_rasterio``: the grid is in the ``transform``
    and ``crs`` ('+init=epsg:32719') attributes. scipy's netCDF3 reader avoids GDAL's warning
    about the deprecated ``+init`` syntax; rioxarray does the georeferencing.
    """
    with xr.open_dataset(path, engine="scipy") as ds:
        var = ds["__xarray_dataarray_variable__"].load()
    epsg = int(str(var.attrs["crs"]).lower().split("epsg:")[1])
    transform = Affine(*np.asarray(var.attrs["transform"], dtype=np.float64)[:6])
    band = xr.DataArray(var.values, dims=("y", "x"), coords={"y": var["y"], "x": var["x"]})
    band.rio.write_crs(f"EPSG:{epsg}", inplace=True)
    return band.rio.write_transform(transform)


@cache
def _sentinel2_cached() -> xr.DataArray:
    folder = _sentinel2_folder()
    bands = [_read_band(folder / f"{name}_band.nc") for name in SENTINEL2_BANDS]
    # The SWIR files are 20 m pixels over a 2x larger extent (same 200 x 300 shape): put them
    # on the 10 m grid of blue/green/red/nir. Nearest keeps the measured values unaltered.
    grid = bands[0]
    bands = [
        b
        if b.rio.transform() == grid.rio.transform()
        else b.rio.reproject_match(grid, resampling=Resampling.nearest)
        for b in bands
    ]
    # Integer reflectance x 10000 stored as float64: back to the L2A uint16 encoding.
    data = np.stack([b.values for b in bands]).round().astype(np.uint16)
    scene = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": list(SENTINEL2_BANDS), "y": grid["y"], "x": grid["x"]},
        name="sentinel2_sample",
        attrs={"long_name": SENTINEL2_BANDS, "scale_factor_reflectance": 1e-4},
    )
    scene.rio.write_crs(grid.rio.crs, inplace=True)
    scene.rio.write_transform(grid.rio.transform(), inplace=True)
    return scene.rio.write_nodata(0, encoded=False)


def sentinel2_sample() -> xr.DataArray:
    """The real Sentinel-2 sample as a uint16 ``(band, y, x)`` scene (reflectance x 10000)."""
    return _sentinel2_cached().copy()


def sentinel2_aoi() -> gpd.GeoDataFrame:
    """A demo AOI over the Sentinel-2 sample, given in EPSG:4326 as users usually have it."""
    minx, miny, maxx, maxy = _sentinel2_cached().rio.bounds()
    w, h = maxx - minx, maxy - miny
    ring = [
        (minx + 0.15 * w, miny + 0.2 * h),
        (minx + 0.8 * w, miny + 0.1 * h),
        (minx + 0.9 * w, miny + 0.75 * h),
        (minx + 0.45 * w, miny + 0.9 * h),
        (minx + 0.1 * w, miny + 0.6 * h),
    ]
    utm = gpd.GeoDataFrame(
        {"name": ["demo AOI"]}, geometry=[Polygon(ring)], crs=_sentinel2_cached().rio.crs
    )
    return utm.to_crs("EPSG:4326")


def write_demo_data(
    outdir: str | os.PathLike, *, synthetic_size: int = 1024, seed: int = 0
) -> dict[str, Path]:
    """Write the demo scenes as GeoTIFFs, the synthetic labels and an AOI GeoJSON.

    ``outdir`` is created if needed.
    Returns the written paths by role: ``sentinel2``, ``aoi``, ``synthetic``,
    ``synthetic_labels``.
    """
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Demo data folder {str(outdir)!r} cannot be created ({exc.strerror}): choose another."
        ) from None
    paths = {
        "sentinel2": outdir / "sentinel2_sample.tif",
        "aoi": outdir / "sentinel2_aoi.geojson",
        "synthetic": outdir / "synthetic_scene.tif",
        "synthetic_labels": outdir / "synthetic_labels.tif",
    }
    write_raster(sentinel2_sample(), paths["sentinel2"])
    with atomic_path(paths["aoi"]) as tmp:
        sentinel2_aoi().to_file(tmp, driver="GeoJSON")
    scene, labels = make_scene(synthetic_size, synthetic_size, seed=seed)
    write_raster(scene, paths["synthetic"])
    write_raster(labels, paths["synthetic_labels"])
    return paths


@dataclass(frozen=True, eq=False)
class TimeseriesScene:
    """One acquisition of a real time series: its time, scene and cloud-covered share."""

    time: dt.datetime
    scene: xr.DataArray
    cloud_fraction: float


def eo_timeseries(folder: str | os.PathLike) -> list[TimeseriesScene]:
    """The eo-learn example EOPatch (``../shared/data/eo_timeseries``) as dated NDVI scenes.

    Each scene is a ``(band, y, x)`` float32 DataArray with one band named ``ndvi``, in
    EPSG:32633 on the grid given by ``bbox.geojson`` and the array shape (row 0 north), nodata
    NaN. ``cloud_fraction`` is the share of pixels of the cloud mask ``CLM.npy``.
    """
    folder = Path(folder)
    names = ("NDVI.npy", "CLM.npy", "timestamps.json", "bbox.geojson")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise InputFileError(
            f"Folder {str(folder)!r} lacks {', '.join(missing)}: pass the eo_timeseries folder."
        )
    ndvi = np.load(folder / "NDVI.npy")[..., 0]
    clouds = np.load(folder / "CLM.npy")[..., 0].astype(bool)
    times = [
        dt.datetime.fromisoformat(t) for t in json.loads((folder / "timestamps.json").read_text())
    ]
    ring = np.asarray(json.loads((folder / "bbox.geojson").read_text())["coordinates"][0])
    (minx, miny), (maxx, maxy) = ring.min(axis=0), ring.max(axis=0)
    height, width = ndvi.shape[1:]
    transform = from_bounds(minx, miny, maxx, maxy, width, height)
    coords = {
        "band": ["ndvi"],
        "y": transform.f + (np.arange(height) + 0.5) * transform.e,
        "x": transform.c + (np.arange(width) + 0.5) * transform.a,
    }
    series = []
    for time, values, cloud in zip(times, ndvi, clouds, strict=True):
        scene = xr.DataArray(values[None], dims=("band", "y", "x"), coords=coords, name="ndvi")
        scene.rio.write_crs("EPSG:32633", inplace=True).rio.write_transform(transform, inplace=True)
        scene = scene.rio.write_nodata(np.nan, encoded=False)
        series.append(TimeseriesScene(time, scene, float(cloud.mean())))
    return series
