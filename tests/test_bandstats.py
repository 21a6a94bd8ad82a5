import numpy as np
import pytest
import xarray as xr

from seamline.core.data.io import open_raster
from seamline.core.errors import BandMismatchError, InputFileError, NoDataError
from seamline.core.prepare.bandstats import BandStats, fit_band_stats, normalise


def _scene(values: np.ndarray, names=("red", "nir"), nodata=0) -> xr.DataArray:
    h, w = values.shape[1:]
    da = xr.DataArray(
        values,
        dims=("band", "y", "x"),
        coords={
            "band": list(names),
            "y": 5000000 - 10 * np.arange(h) - 5,
            "x": 500000 + 10 * np.arange(w) + 5,
        },
    )
    return da.rio.write_crs("EPSG:32633").rio.write_nodata(nodata, encoded=False)


def test_fit_excludes_nodata_and_matches_numpy(small_tif):
    scene = open_raster(small_tif)
    stats = fit_band_stats(scene)
    values = scene.values[:, 5:, :].reshape(4, -1).astype(np.float64)  # rows 0-4 are nodata
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-10)
    np.testing.assert_allclose(stats.p02, np.percentile(values, 2, axis=1))
    np.testing.assert_allclose(stats.p98, np.percentile(values, 98, axis=1))
    assert stats.count == values.shape[1]
    assert stats.bands == ("blue", "green", "red", "nir")


def test_std_is_exact_for_large_offsets():
    rng = np.random.default_rng(1)
    values = (1e6 + rng.normal(0, 0.5, size=(2, 50, 50))).astype(np.float64)
    stats = fit_band_stats(_scene(values, nodata=np.nan))
    np.testing.assert_allclose(stats.std, values.reshape(2, -1).std(axis=1), rtol=1e-6)


def test_fit_over_several_scenes_equals_pooled():
    rng = np.random.default_rng(2)
    a = rng.integers(1, 1000, size=(2, 20, 30)).astype(np.uint16)
    b = rng.integers(500, 3000, size=(2, 10, 30)).astype(np.uint16)
    stats = fit_band_stats([_scene(a), _scene(b)])
    pooled = np.concatenate([a.reshape(2, -1), b.reshape(2, -1)], axis=1).astype(float)
    np.testing.assert_allclose(stats.mean, pooled.mean(axis=1))
    np.testing.assert_allclose(stats.std, pooled.std(axis=1))
    assert stats.count == pooled.shape[1]


def test_percentiles_are_thinned_beyond_max_samples():
    rng = np.random.default_rng(3)
    values = rng.normal(1000, 100, size=(1, 400, 400)).astype(np.float32)
    stats = fit_band_stats(_scene(values, names=("red",), nodata=np.nan), max_samples=10_000)
    exact = np.percentile(values, [2, 98])
    assert abs(stats.p02[0] - exact[0]) < 10 and abs(stats.p98[0] - exact[1]) < 10


def test_fit_rejects_all_nodata_and_mixed_bands():
    with pytest.raises(NoDataError, match="no valid pixels"):
        fit_band_stats(_scene(np.zeros((2, 4, 4), dtype=np.uint16)))
    ones = np.ones((2, 4, 4), dtype=np.uint16)
    with pytest.raises(BandMismatchError, match="different bands"):
        fit_band_stats([_scene(ones), _scene(ones, names=("a", "b"))])


def test_save_load_round_trip_and_corrupt_file(tmp_path, small_tif):
    stats = fit_band_stats(open_raster(small_tif))
    path = stats.save(tmp_path / "stats.json")
    assert BandStats.load(path) == stats
    (tmp_path / "bad.json").write_text('{"bands": ["a"]}')
    with pytest.raises(InputFileError, match="not valid"):
        BandStats.load(tmp_path / "bad.json")


def test_zscore_uses_baseline_not_scene_statistics():
    rng = np.random.default_rng(4)
    base = rng.integers(100, 3000, size=(2, 30, 30)).astype(np.uint16)
    stats = fit_band_stats(_scene(base))
    out = normalise(_scene(base), stats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.nanmean(out.values, axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(np.nanstd(out.values, axis=(1, 2)), 1, atol=1e-4)
    brighter = normalise(_scene((base * 1.5).astype(np.uint16)), stats)
    assert (np.nanmean(brighter.values, axis=(1, 2)) > 0.5).all()  # the shift stays visible


def test_normalise_marks_nodata_nan_reorders_bands_and_keeps_grid():
    values = np.arange(1, 33, dtype=np.uint16).reshape(2, 4, 4)
    values[:, 0, 0] = 0
    stats = BandStats(
        bands=("nir", "red"),
        mean=(10.0, 1.0),
        std=(2.0, 1.0),
        p02=(0.0, 0.0),
        p98=(20.0, 10.0),
        count=1,
    )
    scene = _scene(values)
    out = normalise(scene, stats)
    assert list(out["band"].values) == ["nir", "red"]
    assert np.isnan(out.values[:, 0, 0]).all()
    np.testing.assert_allclose(out.values[0, 1, 1], (values[1, 1, 1] - 10.0) / 2.0)
    np.testing.assert_allclose(out.values[1, 1, 1], (values[0, 1, 1] - 1.0) / 1.0)
    assert out.rio.crs == scene.rio.crs and out.rio.transform() == scene.rio.transform()
    pct = normalise(scene, stats, method="percentile")
    np.testing.assert_allclose(pct.values[0, 1, 1], values[1, 1, 1] / 20.0)


def test_normalise_missing_band_names_the_band():
    stats = BandStats(
        bands=("red", "swir1"),
        mean=(0.0, 0.0),
        std=(1.0, 1.0),
        p02=(0.0, 0.0),
        p98=(1.0, 1.0),
        count=1,
    )
    with pytest.raises(BandMismatchError, match="swir1"):
        normalise(_scene(np.ones((2, 3, 3), dtype=np.uint16)), stats)
