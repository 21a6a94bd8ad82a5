"""The input budget (seamline.core.data.limits): checked on headers, before a pixel is decoded."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from seamline.core.data.io import open_raster, read_geotiff_bytes
from seamline.core.data.limits import DEFAULT_BUDGET, InputBudget
from seamline.core.errors import DataTypeError, InvalidArgumentError, SizeLimitError
from tests.conftest import peak_memory, write_bomb, write_tif


def test_budget_is_validated_and_normalises_type_names():
    assert InputBudget(dtypes=frozenset({"u2", "float32"})).dtypes == {"uint16", "float32"}
    with pytest.raises(InvalidArgumentError, match="at least one byte"):
        InputBudget(max_pixels=0)
    with pytest.raises(InvalidArgumentError, match="numpy type names"):
        InputBudget(dtypes=frozenset({"uint16", "pixels"}))
    with pytest.raises(InvalidArgumentError, match="numpy type names"):
        InputBudget(dtypes=frozenset())


def test_check_raster_counts_values_over_all_bands_and_names_the_decoded_size():
    budget = InputBudget(max_pixels=100 * 100 * 3)
    budget.check_raster(100, 100, 3, ["uint16"], source="scene")  # exactly at the limit
    with pytest.raises(SizeLimitError) as info:
        budget.check_raster(100, 100, 4, ["uint16", "float64"], source="scene", fix="crop it")
    message = str(info.value)
    assert "100 x 100 pixels x 4 bands (40,000 values, 0.3 MiB decoded)" in message
    assert message.endswith("more than the 30,000 values or 0 MiB allowed: crop it.")
    with pytest.raises(SizeLimitError, match="0.2 MiB decoded"):  # float64: half as many
        budget.check_raster(100, 100, 3, ["float64"], source="scene")
    budget.check_raster(100, 100, 3, ["float32"], source="scene")  # float32 fits


def test_a_sparse_float64_upload_within_the_values_is_refused_from_its_header(tmp_path):
    """27 KB on the wire, 1 GiB decoded: it used to cost 2-3 GB of memory (issue #19)."""
    from rasterio.transform import from_origin

    path = tmp_path / "sparse.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4096, height=4096, count=8,
                       dtype="float64", crs="EPSG:32633", transform=from_origin(0, 0, 10, 10),
                       tiled=True, compress="deflate", sparse_ok=True):  # fmt: skip
        pass  # no block written: a few KB
    data = path.read_bytes()
    assert len(data) < 100_000
    with peak_memory() as figures, pytest.raises(SizeLimitError, match="1,024.0 MiB decoded"):
        read_geotiff_bytes(data, budget=DEFAULT_BUDGET)
    assert figures["peak_growth"] < 50 * 2**20, figures


def test_refused_data_types_are_named_with_the_allowed_ones(tmp_path):
    path = write_tif(tmp_path / "c.tif", np.ones((1, 8, 8), dtype=np.complex64), nodata=None)
    scene = open_raster(path)
    with pytest.raises(DataTypeError, match="complex64 pixels, which are not allowed"):
        DEFAULT_BUDGET.check_scene(scene, source="raster")
    with pytest.raises(DataTypeError, match="allowed: float32, float64, int16"):
        read_geotiff_bytes(path.read_bytes(), budget=DEFAULT_BUDGET)
    assert read_geotiff_bytes(path.read_bytes()).dtype == np.complex64  # no budget: read


def test_streaming_check_bounds_the_files_blocks_not_the_raster(tmp_path):
    small_tiles = open_raster(write_bomb(tmp_path / "tiles.tif", side=20000, block=256))
    huge_tiles = open_raster(write_bomb(tmp_path / "huge.tif", side=20000, block=16384))
    budget = InputBudget(max_pixels=4096 * 4096)
    budget.check_scene(small_tiles, source="raster", streaming=True)  # 256 x 256 blocks
    with pytest.raises(SizeLimitError, match="20000 x 20000 pixels x 1 bands"):
        budget.check_scene(small_tiles, source="raster")
    with pytest.raises(SizeLimitError, match="16384 x 16384 pixels x 1 bands"):
        budget.check_scene(huge_tiles, source="raster", streaming=True)


def test_bomb_bytes_are_refused_from_the_header_in_memory(tmp_path):
    data = write_bomb(tmp_path / "bomb.tif").read_bytes()
    with rasterio.open(tmp_path / "bomb.tif") as src:
        assert (src.width, src.height) == (60000, 60000) and len(data) < 2**20
    with peak_memory() as figures, pytest.raises(SizeLimitError, match="60000 x 60000"):
        read_geotiff_bytes(data, budget=DEFAULT_BUDGET)
    assert figures["peak_growth"] < 50 * 2**20, figures
    with pytest.raises(SizeLimitError, match="larger than the 1000 bytes allowed"):
        read_geotiff_bytes(data, budget=InputBudget(max_bytes=1000))
