"""Shared fixtures: small georeferenced rasters made on the fly, and the real data folder."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real rasters of ../shared/data; tests using them skip when it is absent."""
    if not (SHARED_DATA / "landsat" / "RGB.byte.tif").exists():
        pytest.skip(f"real test data not found at {SHARED_DATA} (it lives beside the checkout)")
    return SHARED_DATA


def write_tif(
    path: Path, data: np.ndarray, *, crs="EPSG:32633", transform=None, nodata=0, descriptions=None
) -> Path:
    """Write a (band, y, x) array as a GeoTIFF with rasterio (independent of core.io)."""
    transform = transform or from_origin(500000, 5000000, 10, 10)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


@pytest.fixture
def small_tif(tmp_path: Path) -> Path:
    """A 4-band uint16 60 x 80 GeoTIFF (EPSG:32633, 10 m) with a nodata border of zeros."""
    rng = np.random.default_rng(0)
    data = rng.integers(100, 5000, size=(4, 60, 80), dtype=np.uint16)
    data[:, :5, :] = 0
    return write_tif(tmp_path / "small.tif", data, descriptions=("blue", "green", "red", "nir"))


@pytest.fixture
def small_aoi(tmp_path: Path) -> Path:
    """A triangular GeoJSON AOI (EPSG:4326) in the middle of ``small_tif``."""
    triangle = Polygon([(500153, 4999653), (500597, 4999653), (500371, 4999817)])
    utm = gpd.GeoDataFrame(geometry=[triangle], crs="EPSG:32633")
    path = tmp_path / "aoi.geojson"
    utm.to_crs("EPSG:4326").to_file(path, driver="GeoJSON")
    return path
