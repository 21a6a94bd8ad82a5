"""STAC items (issue #21): an item's band assets, each its own COG served over HTTP, stacked
into one raster; predict equals the multi-band file's prediction; bad items and missing
assets are one sentence."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil
from shapely.geometry import box, mapping

from seamline.app.cli import main
from seamline.core.data.io import open_raster, write_raster
from seamline.core.data.stac import write_stac_vrt
from seamline.core.demo.synthetic import make_scene
from tests.rangeserver import serving
from tests.test_cli import assert_one_sentence_error

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
TILING = ["--tile-size", "256", "--overlap", "32", "--precision", "fp32"]


def _single_band_cogs(scene, folder, *, coarse=()):
    """One COG per band (``coarse`` bands at half resolution, as Sentinel-2's 20 m ones)."""
    for i, name in enumerate(BANDS):
        band = scene.isel(band=[i])
        if name in coarse:
            band = band.coarsen(x=2, y=2).mean().astype(scene.dtype).rio.write_crs(scene.rio.crs)
            band = band.rio.write_nodata(scene.rio.nodata)
        band.attrs["long_name"] = (name,)
        plain = write_raster(band, folder / f"{name}.plain.tif")
        rasterio.shutil.copy(plain, folder / f"{name}.tif", driver="COG", compress="deflate")
        plain.unlink()


def _item(folder, href) -> pystac.Item:
    with rasterio.open(folder / "blue.tif") as ds:
        bounds = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    item = pystac.Item("scene-1", mapping(box(*bounds)), list(bounds),
                       dt.datetime(2026, 6, 1, tzinfo=dt.UTC), {})  # fmt: skip
    for name in BANDS:
        item.add_asset(name, pystac.Asset(href(name), media_type=pystac.MediaType.COG))
    return item


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stac")
    scene = make_scene(400, 360, seed=12)[0]
    (folder / "same").mkdir()
    (folder / "mixed").mkdir()
    _single_band_cogs(scene, folder / "same")
    _single_band_cogs(scene, folder / "mixed", coarse=("swir1", "swir2"))
    whole = write_raster(scene, folder / "whole.tif")
    with serving(folder) as server:
        for kind in ("same", "mixed"):
            item = _item(folder / kind, lambda name, kind=kind: server.url(f"{kind}/{name}.tif"))
            (folder / f"{kind}.json").write_text(json.dumps(item.to_dict()))
        yield server, folder, whole


def test_an_item_of_remote_band_assets_predicts_as_the_stacked_file(served, tmp_path):
    server, folder, whole = served
    assets = ",".join(BANDS)
    assert main(["predict", str(folder / "same.json"), str(tmp_path / "stac.tif"), "--assets",
                 assets, *TILING]) == 0  # fmt: skip
    assert main(["predict", str(whole), str(tmp_path / "file.tif"), *TILING]) == 0
    with rasterio.open(tmp_path / "stac.tif") as a, rasterio.open(tmp_path / "file.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert (a.crs, a.transform) == (b.crs, b.transform)
    # the item's own URL works as well as its file
    assert main(["predict", server.url("same.json"), str(tmp_path / "url.tif"), "--assets",
                 assets, *TILING]) == 0  # fmt: skip


def test_coarser_assets_are_resampled_onto_the_finest_grid(served, tmp_path):
    _, folder, whole = served
    vrt = write_stac_vrt(folder / "mixed.json", BANDS, tmp_path / "item.vrt")
    stacked, reference = open_raster(vrt), open_raster(whole)
    assert list(stacked.band.values) == BANDS and stacked.shape == reference.shape
    assert stacked.rio.transform() == reference.rio.transform()
    np.testing.assert_array_equal(stacked.values[:4], reference.values[:4])  # 10 m bands as is
    swir = stacked.values[4].astype(float)
    assert np.corrcoef(swir.ravel(), reference.values[4].astype(float).ravel())[0, 1] > 0.9


@pytest.mark.parametrize("case", ["missing asset", "catalog", "not json"])
def test_a_bad_item_or_asset_is_one_sentence(served, tmp_path, capsys, case):
    _, folder, _ = served
    item, assets = folder / "same.json", "blue,green,B99"
    if case == "catalog":
        item = tmp_path / "catalog.json"
        pystac.Catalog("c", "a catalog").save_object(dest_href=str(item), include_self_link=False)
        assets = ",".join(BANDS)
    elif case == "not json":
        item = tmp_path / "item.json"
        item.write_text("{not json")
    code = main(["predict", str(item), str(tmp_path / "out.tif"), "--assets", assets, *TILING])
    err = capsys.readouterr().err
    assert_one_sentence_error(code, err, {"missing asset": "B99", "catalog": "Catalog",
                                          "not json": "STAC item"}[case])  # fmt: skip
    assert not (tmp_path / "out.tif").exists()
