"""Shared fixtures: small georeferenced rasters made on the fly, and the real data folder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _measurements_cached_per_run(tmp_path_factory):
    """What Seamline caches per machine (measured model geometry) goes to a folder of this
    run, so no test reads a cache an earlier run left (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path_factory.mktemp("seamline-cache")))
        yield
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
    """Write a (band, y, x) array as a GeoTIFF with rasterio (independent of
    seamline.core.data.io)."""
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


def write_bomb(path: Path, *, side: int = 60000, block: int = 256) -> Path:
    """A "decompression bomb": a sparse, deflated GeoTIFF of a few hundred kB whose header
    declares ``side`` x ``side`` uint8 pixels in ``block`` x ``block`` tiles (one written)."""
    with rasterio.open(
        path, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), nodata=0,
        tiled=True, blockxsize=block, blockysize=block, compress="deflate", sparse_ok=True,
        BIGTIFF="YES",
    ) as dst:  # fmt: skip
        dst.write(np.ones((1, block, block), dtype="uint8"), window=Window(0, 0, block, block))
    return path


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(f"{key}:"))


@contextmanager
def peak_memory() -> Iterator[dict]:
    """Measure the block: ``seconds``, and ``peak_growth`` (bytes) of this process's peak
    RSS over its RSS at the start (VmHWM, reset through /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # Linux >= 4.0: resets VmHWM to the current RSS
    before, start, figures = _status_kib("VmRSS"), time.perf_counter(), {}
    yield figures
    figures["seconds"] = time.perf_counter() - start
    figures["peak_growth"] = (_status_kib("VmHWM") - before) * 1024


def foreign_model(folder: Path) -> Path:
    """A model that is not ours: a small dilated-conv net (3 classes, the demo's six band
    names, no band statistics), exported as a ``torch.export`` archive with dynamic batch,
    height and width, and its JSON sidecar."""
    import json

    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(12, 3, 1),
    ).eval()  # fmt: skip
    dims = {"batch": torch.export.Dim("batch", min=1, max=64),
            "h": torch.export.Dim("h", min=8, max=4096),
            "w": torch.export.Dim("w", min=8, max=4096)}  # fmt: skip
    program = torch.export.export(
        net, (torch.zeros(2, 6, 64, 64),),
        dynamic_shapes={"input": {0: dims["batch"], 2: dims["h"], 3: dims["w"]}},
    )  # fmt: skip
    path = folder / "field_net.pt2"
    torch.export.save(program, path)
    path.with_suffix(".json").write_text(json.dumps({
        "name": "field_net", "bands": ["blue", "green", "red", "nir", "swir1", "swir2"],
        "classes": ["water", "field", "town"], "colors": ["#1f78b4", "#b2df8a", "#e31a1c"],
        "receptive_radius": 3,
    }))  # fmt: skip
    return path
