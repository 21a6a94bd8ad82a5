import json

import numpy as np
import rasterio

from seamline.app.cli import main
from seamline.core.data.io import open_aoi, open_raster, valid_mask
from seamline.core.demo.data import sentinel2_aoi, sentinel2_sample
from seamline.core.prepare.indices import spectral_index
from seamline.core.prepare.scene import prepare


def test_sentinel2_sample_is_georeferenced_on_one_10m_grid():
    scene = sentinel2_sample()
    assert scene.shape == (6, 200, 300) and scene.dtype == np.uint16
    assert list(scene["band"].values) == ["blue", "green", "red", "nir", "swir1", "swir2"]
    assert scene.rio.crs.to_epsg() == 32719
    assert scene.rio.resolution() == (10.0, -10.0)
    assert valid_mask(scene).all()
    # The SWIR files are 20 m: on the 10 m grid each value repeats in 2 x 2 blocks.
    swir = scene.sel(band="swir1").values
    np.testing.assert_array_equal(swir[::2, ::2], swir[1::2, 1::2])
    ndvi = spectral_index(scene, "ndvi").values
    assert -0.2 < ndvi.mean() < 0.9 and np.isfinite(ndvi).all()


def test_demo_aoi_is_wgs84_and_prepares_onto_the_source_grid():
    aoi = sentinel2_aoi()
    assert aoi.crs.to_epsg() == 4326
    scene = sentinel2_sample()
    out = prepare(scene, aoi=aoi)
    assert out.rio.resolution() == scene.rio.resolution()
    assert 0.3 < valid_mask(out).mean() < 1.0


def test_demo_data_command_writes_readable_files(capsys, tmp_path):
    outdir = tmp_path / "demo"
    assert main(["demo-data", str(outdir), "--size", "64"]) == 0
    paths = json.loads(capsys.readouterr().out)
    scene = open_raster(paths["sentinel2"])
    np.testing.assert_array_equal(scene.values, sentinel2_sample().values)
    assert scene.rio.transform() == sentinel2_sample().rio.transform()
    with rasterio.open(paths["synthetic"]) as src, rasterio.open(paths["synthetic_labels"]) as lab:
        assert src.count == 6 and src.width == 64 and src.crs is not None
        assert lab.count == 1 and lab.transform == src.transform
    assert open_aoi(paths["aoi"]).crs.to_epsg() == 4326
