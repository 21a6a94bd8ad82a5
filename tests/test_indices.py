import numpy as np
import pytest
import xarray as xr

from seamline.core.errors import BandMismatchError
from seamline.core.prepare.indices import available_indices, spectral_index


def _scene(values, names):
    da = xr.DataArray(
        np.asarray(values, dtype=np.uint16), dims=("band", "y", "x"), coords={"band": list(names)}
    )
    return da.rio.write_crs("EPSG:32633").rio.write_nodata(0, encoded=False)


def test_ndvi_formula_nodata_and_zero_denominator():
    red = [[100, 0], [300, 1000]]
    nir = [[300, 0], [100, 1000]]
    out = spectral_index(_scene([red, nir], ["red", "nir"]), "ndvi")
    assert out.dtype == np.float32 and out.dims == ("y", "x")
    np.testing.assert_allclose(out.values[0, 0], 0.5)
    np.testing.assert_allclose(out.values[1, 0], -0.5)
    np.testing.assert_allclose(out.values[1, 1], 0.0)
    assert np.isnan(out.values[0, 1])


def test_sentinel2_band_codes_are_understood():
    scene = _scene(np.ones((3, 2, 2)), ["B03", "B04", "B08"])
    assert available_indices(scene) == ["ndvi", "ndwi"]
    assert np.isfinite(spectral_index(scene, "NDWI").values).all()


def test_missing_band_is_a_clear_error():
    with pytest.raises(BandMismatchError, match="nir and red"):
        spectral_index(_scene(np.ones((1, 2, 2)), ["band_1"]), "ndvi")
