"""Tests of the seeded synthetic scene and series generator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import numpy as np
import pytest
from affine import Affine

from seamline.core.demo.series import SeriesEvents, SyntheticScene, make_series
from seamline.core.demo.synthetic import (
    BANDS,
    BARE_ROCK_REFLECTANCE,
    CLASS_COLORS,
    CLASS_REFLECTANCE,
    CLASS_REFLECTANCE_WINTER,
    CLASS_VARIABILITY,
    CLASSES,
    LABEL_NODATA,
    growth_region,
    make_scene,
    season_for,
)
from seamline.core.errors import InvalidCRSError

WATER, VEGETATION, CROPLAND, BUILT_UP, BARE_SOIL = range(5)
SIZE = 256


@pytest.fixture(scope="module")
def summer():
    return make_scene(SIZE, SIZE, seed=3)


def reflectance(scene, band):
    return scene.sel(band=band).values.astype(np.float64) / 10_000


def ndvi(scene):
    red, nir = reflectance(scene, "red"), reflectance(scene, "nir")
    return (nir - red) / (nir + red)


def shares(labels):
    return np.bincount(labels.values.ravel(), minlength=len(CLASSES)) / labels.size


# --- constants ---------------------------------------------------------------------------


def test_constants_describe_six_bands_and_five_classes():
    assert BANDS == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert CLASSES == ("water", "vegetation", "cropland", "built-up", "bare soil")
    assert len(CLASS_COLORS) == len(CLASSES)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", color) for color in CLASS_COLORS)
    for table in (CLASS_REFLECTANCE, CLASS_REFLECTANCE_WINTER):
        assert table.shape == (5, 6) and table.dtype == np.float32
        assert ((table > 0) & (table < 1)).all()
        with pytest.raises(ValueError):
            table[0, 0] = 0.5  # module constants are read-only
    assert CLASS_VARIABILITY.shape == (5,) and (CLASS_VARIABILITY > 0).all()


def test_class_spectra_are_realistic():
    r = dict(zip(BANDS, CLASS_REFLECTANCE.T, strict=True))
    assert r["nir"][WATER] < 0.03 and r["swir1"][WATER] < 0.02
    assert r["red"][VEGETATION] == pytest.approx(0.04) and r["nir"][VEGETATION] > 0.3
    assert r["red"][VEGETATION] < r["red"][CROPLAND] < r["red"][BARE_SOIL]
    assert r["swir1"][BUILT_UP] > r["red"][BUILT_UP]
    assert np.all(np.diff(CLASS_REFLECTANCE[BARE_SOIL, :5]) > 0)  # soil rises to swir1


# --- determinism -------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays(summer):
    scene, labels = make_scene(SIZE, SIZE, seed=3)
    np.testing.assert_array_equal(scene.values, summer[0].values)
    np.testing.assert_array_equal(labels.values, summer[1].values)


def test_different_seed_gives_a_different_layout(summer):
    scene, labels = make_scene(SIZE, SIZE, seed=4)
    assert (labels.values == summer[1].values).mean() < 0.8
    assert not np.array_equal(scene.values, summer[0].values)


def test_acquisition_changes_only_sensor_noise(summer):
    scene, labels = make_scene(SIZE, SIZE, seed=3, acquisition=1)
    np.testing.assert_array_equal(labels.values, summer[1].values)
    difference = scene.values.astype(np.int32) - summer[0].values
    assert np.any(difference != 0)
    assert np.abs(difference).max() <= 120  # uniform noise of std 0.003 spans +-52 DN


# --- structure and georeferencing --------------------------------------------------------


def test_scene_and_labels_structure(summer):
    scene, labels = summer
    assert scene.dims == ("band", "y", "x") and scene.shape == (6, SIZE, SIZE)
    assert scene.dtype == np.uint16 and labels.dtype == np.uint8
    assert labels.dims == ("y", "x") and labels.shape == (SIZE, SIZE)
    assert list(scene.band.values) == list(BANDS)
    assert scene.attrs["long_name"] == BANDS
    assert scene.values.min() >= 1 and scene.values.max() <= 10_000
    assert set(np.unique(labels.values)) <= set(range(5))


def test_default_georeferencing(summer):
    scene, labels = summer
    expected = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    for array in (scene, labels):
        assert array.rio.crs.to_epsg() == 32633
        assert array.rio.transform() == expected
    assert scene.rio.nodata == 0 and labels.rio.nodata == LABEL_NODATA
    assert scene.x.values[0] == 500005.0 and scene.y.values[0] == 4999995.0
    np.testing.assert_allclose(np.diff(scene.x.values), 10.0)
    np.testing.assert_allclose(np.diff(scene.y.values), -10.0)


def test_custom_georeferencing():
    scene, labels = make_scene(
        8, 5, crs="EPSG:32719", resolution=20.0, origin=(300000.0, 7000000.0), nodata=65535
    )
    assert scene.rio.crs.to_epsg() == 32719 and labels.rio.crs.to_epsg() == 32719
    assert scene.rio.transform() == Affine(20.0, 0.0, 300000.0, 0.0, -20.0, 7000000.0)
    assert scene.rio.nodata == 65535
    assert scene.x.values[-1] == 300000.0 + 4.5 * 20.0
    assert scene.values.max() <= 10_000


@pytest.mark.parametrize(("height", "width"), [(1, 1), (7, 13), (13, 7), (1, 40)])
def test_odd_sizes(height, width):
    scene, labels = make_scene(height, width, seed=1, cloud_cover=0.5, built_up_growth=0.5)
    assert scene.shape == (6, height, width) and labels.shape == (height, width)
    assert scene.rio.transform() == Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    assert scene.values.min() >= 1 and scene.values.max() <= 10_000


# --- landscape ---------------------------------------------------------------------------


def test_default_scene_has_all_classes_in_coherent_patches():
    scene, labels = make_scene()
    assert scene.shape == (6, 512, 512)
    assert (shares(labels) >= 0.05).all(), shares(labels)
    same_as_right = labels.values[:, 1:] == labels.values[:, :-1]
    same_as_below = labels.values[1:] == labels.values[:-1]
    assert same_as_right.mean() > 0.9 and same_as_below.mean() > 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_shares_are_non_trivial_across_seeds(seed):
    _, labels = make_scene(SIZE, SIZE, seed=seed)
    assert (shares(labels) >= 0.05).all(), shares(labels)


def test_class_means_match_the_table(summer):
    scene, labels = summer
    values = scene.values.astype(np.float64) / 10_000
    for cls in range(4):
        measured = values[:, labels.values == cls].mean(axis=1)
        np.testing.assert_allclose(measured, CLASS_REFLECTANCE[cls], rtol=0.1, atol=0.004)
    # Bare soil mixes bright soil and dark rock: its mean lies between the two end-members,
    # and its pixels span both.
    bare = values[:, labels.values == 4]
    low = np.minimum(CLASS_REFLECTANCE[4], BARE_ROCK_REFLECTANCE) - 0.004
    high = np.maximum(CLASS_REFLECTANCE[4], BARE_ROCK_REFLECTANCE) + 0.004
    assert ((bare.mean(axis=1) > low) & (bare.mean(axis=1) < high)).all()
    swir1 = bare[4]
    assert np.percentile(swir1, 5) < BARE_ROCK_REFLECTANCE[4] + 0.02
    assert np.percentile(swir1, 95) > CLASS_REFLECTANCE[4, 4] - 0.03


def test_classes_have_within_class_texture(summer):
    scene, labels = summer
    nir = reflectance(scene, "nir")[labels.values == VEGETATION]
    assert 0.05 < nir.std() / nir.mean() < 0.3


# --- season ------------------------------------------------------------------------------


def test_summer_vegetation_ndvi_is_high_and_drops_in_winter(summer):
    scene, labels = summer
    winter, winter_labels = make_scene(SIZE, SIZE, seed=3, season=-1.0)
    np.testing.assert_array_equal(winter_labels.values, labels.values)
    vegetation = labels.values == VEGETATION
    summer_ndvi, winter_ndvi = ndvi(scene)[vegetation], ndvi(winter)[vegetation]
    assert summer_ndvi.mean() > 0.7 and (summer_ndvi > 0.5).mean() > 0.95
    assert winter_ndvi.mean() < 0.5 and winter_ndvi.mean() < summer_ndvi.mean() - 0.25
    assert reflectance(winter, "red")[vegetation].mean() > reflectance(scene, "red")[
        vegetation
    ].mean()
    cropland = labels.values == CROPLAND
    assert ndvi(winter)[cropland].mean() < 0.3 < ndvi(scene)[cropland].mean()


def test_half_winter_lies_between_summer_and_winter(summer):
    vegetation = summer[1].values == VEGETATION
    means = [
        ndvi(make_scene(SIZE, SIZE, seed=3, season=s)[0])[vegetation].mean()
        for s in (-1.0, -0.5)
    ]
    assert means[0] < means[1] < ndvi(summer[0])[vegetation].mean()


def test_positive_season_is_summer(summer):
    scene, _ = make_scene(SIZE, SIZE, seed=3, season=0.8)
    np.testing.assert_array_equal(scene.values, summer[0].values)


def test_season_formula():
    assert season_for(dt.date(2023, 7, 15)) == pytest.approx(1.0)
    assert season_for(dt.date(2023, 1, 14)) < -0.99
    assert abs(season_for(dt.date(2023, 4, 15))) < 0.02
    assert season_for(dt.datetime(2024, 12, 1, 10, 30)) < -0.7


# --- recalibration -----------------------------------------------------------------------


def test_gain_and_offset_rescale_reflectance(summer):
    scene, labels = make_scene(SIZE, SIZE, seed=3, gain=1.15, offset=0.02)
    np.testing.assert_array_equal(labels.values, summer[1].values)
    before, after = summer[0].values.astype(np.float64), scene.values.astype(np.float64)
    ratio = (after.mean(axis=(1, 2)) - 200) / before.mean(axis=(1, 2))
    np.testing.assert_allclose(ratio, 1.15, rtol=0.01)
    unclipped = before > 1
    assert np.abs(after - (before * 1.15 + 200))[unclipped].max() <= 2


def test_gain_clips_to_the_valid_range():
    scene, _ = make_scene(32, 32, gain=40.0, offset=0.5)
    assert scene.values.max() == 10_000 and scene.values.min() >= 1


# --- clouds ------------------------------------------------------------------------------


def test_clouds_brighten_the_scene_but_not_the_labels(summer):
    scene, labels = make_scene(SIZE, SIZE, seed=3, cloud_cover=0.3)
    np.testing.assert_array_equal(labels.values, summer[1].values)
    brightening = reflectance(scene, "blue") - reflectance(summer[0], "blue")
    cloudy = brightening > 0.2
    assert 0.2 < cloudy.mean() < 0.4
    assert reflectance(scene, "blue")[cloudy].mean() > 0.5
    assert (brightening == 0).mean() > 0.5  # clear sky is untouched
    assert ((brightening > 0.01) & ~cloudy).any()  # soft cloud edges


def test_full_cloud_cover_hides_the_ground():
    scene, _ = make_scene(64, 64, cloud_cover=1.0)
    assert (reflectance(scene, "blue") > 0.3).mean() > 0.95


# --- construction ------------------------------------------------------------------------


def test_construction_converts_land_inside_the_growth_region_only(summer):
    _, before = summer
    _, after = make_scene(SIZE, SIZE, seed=3, built_up_growth=0.5, growth_center=(0.25, 0.75))
    region = growth_region(SIZE, SIZE, 0.5, (0.25, 0.75))
    assert region.sum() == pytest.approx(0.5 * 0.25 * SIZE * SIZE, rel=0.02)
    rows, cols = np.nonzero(region)
    assert rows.mean() == pytest.approx(0.75 * SIZE, abs=1) and cols.mean() == pytest.approx(
        0.25 * SIZE, abs=1
    )
    changed = before.values != after.values
    assert changed.any() and not (changed & ~region).any()
    assert (after.values[changed] == BUILT_UP).all()
    assert (after.values[region & (before.values == WATER)] == WATER).all()
    assert (after.values[region & (before.values != WATER)] == BUILT_UP).all()
    assert shares(after)[BUILT_UP] > shares(before)[BUILT_UP] + 0.05


def test_growth_region_grows_with_built_up_growth():
    small, large = growth_region(64, 64, 0.3), growth_region(64, 64, 0.6)
    assert not (small & ~large).any() and large.sum() > small.sum()
    assert not growth_region(7, 7, 0.0).any()


def test_constructed_pixels_look_built_up(summer):
    scene, labels = make_scene(SIZE, SIZE, seed=3, built_up_growth=1.0)
    converted = (labels.values == BUILT_UP) & (summer[1].values != BUILT_UP)
    swir1 = reflectance(scene, "swir1")[converted].mean()
    assert swir1 == pytest.approx(CLASS_REFLECTANCE[BUILT_UP, 4], rel=0.1)


# --- series ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def series():
    return make_series(12, height=48, width=48, seed=5)


def test_series_dates_and_events(series):
    assert len(series) == 12 and all(isinstance(s, SyntheticScene) for s in series)
    start = dt.datetime(2024, 1, 1)
    assert [s.time for s in series] == [start + dt.timedelta(days=30 * i) for i in range(12)]
    events = {i: s.events for i, s in enumerate(series) if s.events}
    assert events == {
        2: ("clouds",),
        4: ("construction",),
        5: ("construction",),
        6: ("construction",),
        7: ("construction",),
        8: ("recalibration",),
        10: ("clouds",),
    }
    assert [s.season for s in series] == [season_for(s.time) for s in series]
    assert series[0].season < -0.9 and series[6].season > 0.9
    with pytest.raises(dataclasses.FrozenInstanceError):
        series[0].events = ()


def test_series_keeps_the_layout_until_construction(series):
    for item in series[1:4]:
        np.testing.assert_array_equal(item.labels.values, series[0].labels.values)
    built = [(s.labels.values == BUILT_UP).mean() for s in series]
    assert built[3] < built[4] < built[5] < built[6] < built[7] == built[11]


def test_series_scene_matches_make_scene_with_the_documented_arguments(series):
    item = series[9]  # recalibrated, fully constructed, clear
    scene, labels = make_scene(
        48, 48, seed=5, season=season_for(item.time), acquisition=9,
        gain=1.15, offset=0.02, built_up_growth=1.0,
    )
    np.testing.assert_array_equal(item.scene.values, scene.values)
    np.testing.assert_array_equal(item.labels.values, labels.values)


def test_series_with_custom_events():
    events = SeriesEvents(
        recalibration_index=1, recalibration_gain=1.5, recalibration_offset=0.0,
        construction_start_index=None, cloudy_indices=(),
    )
    items = make_series(3, height=16, width=16, start=dt.date(2024, 6, 1), freq_days=1,
                        events=events)
    assert [s.events for s in items] == [(), ("recalibration",), ()]
    assert items[2].time == dt.datetime(2024, 6, 3)
    assert items[1].scene.values.mean() > 1.4 * items[0].scene.values.mean()
    for item in items[1:]:
        np.testing.assert_array_equal(item.labels.values, items[0].labels.values)


# --- argument validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("height", 0),
        ("width", -3),
        ("height", 2.5),
        ("seed", -1),
        ("acquisition", -1),
        ("resolution", 0.0),
        ("resolution", float("nan")),
        ("origin", (0.0, float("inf"))),
        ("season", -1.5),
        ("gain", 0.0),
        ("offset", 2.0),
        ("cloud_cover", 1.5),
        ("cloud_cover", -0.1),
        ("built_up_growth", 1.2),
        ("growth_center", (0.5, 1.5)),
        ("growth_center", 0.5),
        ("nodata", 5),
        ("nodata", -1),
    ],
)
def test_invalid_scene_arguments_name_the_argument(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be .*got {re.escape(repr(value))}\.$"):
        make_scene(**{"height": 4, "width": 4, name: value})


def test_invalid_crs_raises_a_seamline_error():
    with pytest.raises(InvalidCRSError, match="crs"):
        make_scene(4, 4, crs="EPSG:not-a-code")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n": 0}, "n"), ({"freq_days": 0}, "freq_days"), ({"start": "January"}, "start")],
)
def test_invalid_series_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make_series(**{"height": 4, "width": 4, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"recalibration_gain": 0.0}, "recalibration_gain"),
        ({"recalibration_index": -1}, "recalibration_index"),
        ({"construction_rate": 0.0}, "construction_rate"),
        ({"cloudy_indices": (1, -2)}, "cloudy_indices"),
        ({"cloud_cover": 2.0}, "cloud_cover"),
    ],
)
def test_invalid_series_events_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        SeriesEvents(**kwargs)
