"""Seeded synthetic Sentinel-2-like scenes with known labels and known, dated changes.

:func:`make_scene` draws a land-cover map (water, vegetation, cropland, built-up, bare soil)
and renders six-band L2A-style reflectance from it (uint16, reflectance x 10000, nodata 0),
georeferenced through rioxarray. Every knob that a drift monitor should notice is explicit:
``season`` (phenology), ``gain``/``offset`` (sensor recalibration), ``cloud_cover`` and
``built_up_growth`` (construction). :func:`seamline.core.demo.series.make_series` strings
scenes into a dated time series in which each of those changes happens on a known date.

Randomness comes from independent streams of one ``numpy.random.SeedSequence(seed)``: the
label layout and the surface texture depend only on ``seed`` and the scene size, sensor noise
and cloud placement also on ``acquisition``. Smooth fields are cubic B-spline value noise,
evaluated for all octaves at once as one matrix product, so nothing loops over pixels.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from seamline.core.demo.checks import check_integer, check_number, check_pair
from seamline.core.errors import InvalidCRSError

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")
"""Band names, in order: Sentinel-2 B2, B3, B4, B8, B11, B12."""

CLASSES: tuple[str, ...] = ("water", "vegetation", "cropland", "built-up", "bare soil")
"""Class names; a label value is the index into this tuple."""

CLASS_COLORS: tuple[str, ...] = ("#1f78b4", "#33a02c", "#e6c229", "#e31a1c", "#b15928")
"""Hex colour per class, aligned with :data:`CLASSES`."""

REFLECTANCE_SCALE = 10_000
"""Digital number = reflectance x REFLECTANCE_SCALE (Sentinel-2 L2A convention)."""

LABEL_NODATA = 255
"""Nodata value of label rasters."""


def _frozen(values: list[float] | list[list[float]]) -> np.ndarray:
    table = np.array(values, dtype=np.float32)
    table.flags.writeable = False
    return table


CLASS_REFLECTANCE = _frozen([
    # blue  green   red    nir   swir1  swir2
    [0.060, 0.050, 0.030, 0.015, 0.008, 0.005],  # water
    [0.030, 0.060, 0.040, 0.350, 0.170, 0.080],  # vegetation
    [0.050, 0.080, 0.070, 0.300, 0.220, 0.130],  # cropland
    [0.140, 0.150, 0.170, 0.220, 0.260, 0.230],  # built-up
    [0.100, 0.140, 0.190, 0.260, 0.350, 0.300],  # bare soil
])
"""Summer mean surface reflectance, shape (class, band), float32."""

CLASS_REFLECTANCE_WINTER = _frozen([
    [0.060, 0.050, 0.030, 0.015, 0.008, 0.005],  # water: unchanged
    [0.040, 0.060, 0.070, 0.170, 0.190, 0.120],  # vegetation: dormant, NDVI ~0.4
    [0.070, 0.090, 0.120, 0.170, 0.250, 0.210],  # cropland: ploughed, moist soil
    [0.140, 0.150, 0.170, 0.220, 0.260, 0.230],  # built-up: unchanged
    [0.100, 0.140, 0.190, 0.260, 0.350, 0.300],  # bare soil: unchanged
])
"""Deep-winter (``season=-1``) mean surface reflectance, shape (class, band), float32."""

BARE_ROCK_REFLECTANCE = _frozen([0.115, 0.110, 0.125, 0.150, 0.195, 0.170])
"""Dark rock / dry steppe: the second end-member of bare soil, mixed per pixel by a smooth
field so that bare land spans bright soils to dark, flat-spectrum rock (as in arid
mountains, e.g. the real Sentinel-2 demo scene)."""

CLASS_VARIABILITY = _frozen([0.15, 0.12, 0.18, 0.20, 0.15])
"""Within-class texture: relative standard deviation (std / mean) per class."""

_WATER, _VEGETATION, _CROPLAND, _BUILT_UP, _BARE_SOIL = range(len(CLASSES))
# Response of each band to the "vigour" texture field: more NIR, less visible light.
_VIGOUR_LOADING = (-0.5, -0.3, -0.8, 0.6, -0.1, -0.3)
_CLOUD_REFLECTANCE = (0.72, 0.70, 0.68, 0.66, 0.55, 0.50)
_CLOUD_EDGE = 0.25  # half-width of the cloud-edge blend, in standard deviations of the field
_NOISE_STD = 0.003  # per-pixel sensor noise, reflectance units
_MAX_GROWTH_AREA = 0.25  # share of the scene converted at built_up_growth=1
_PEAK_SUMMER_DOY = 196  # 15 July


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def _bspline_weights(n: int, spacing: float) -> np.ndarray:
    """(n, m) float32 matrix of cubic B-spline weights from m control points `spacing` apart."""
    position = (np.arange(n) + 0.5) / spacing
    cell = position.astype(np.intp)
    t = (position - cell)[:, None]
    weights = np.hstack([
        (1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3
    ]) / 6
    matrix = np.zeros((n, int(cell[-1]) + 4), dtype=np.float32)
    np.put_along_axis(matrix, cell[:, None] + np.arange(4), weights.astype(np.float32), axis=1)
    return matrix


def _noise(
    rng: np.random.Generator, height: int, width: int, scales: Sequence[float]
) -> np.ndarray:
    """Smooth Gaussian noise of about unit variance, float32 (height, width).

    One octave per scale (feature size in pixels), amplitude proportional to scale. Each
    octave is ``Wy @ C @ Wx.T`` with B-spline weight matrices; all octaves are summed by a
    single product of the stacked factors.
    """
    left, right = [], []
    for scale in scales:
        rows, cols = _bspline_weights(height, scale), _bspline_weights(width, scale)
        control = rng.standard_normal((rows.shape[1], cols.shape[1]), dtype=np.float32)
        left.append(rows @ (control * np.float32(scale / scales[0])))
        right.append(cols)
    field = np.hstack(left) @ np.hstack(right).T
    # A cubic B-spline of unit white noise has variance ~0.48.
    field *= np.float32(1 / math.sqrt(0.48 * sum((s / scales[0]) ** 2 for s in scales)))
    return field


def _quantile(field: np.ndarray, q: float) -> float:
    """Quantile of a field, estimated on a regular subsample of at most ~65k pixels."""
    step = max(1, math.isqrt(field.size // 65_536))
    return float(np.quantile(field[::step, ::step], q))


def _parcels(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular field parcels laid out in brick-like strips.

    Returns the class of each pixel's parcel (uint8: mostly cropland, some fallow bare soil
    and meadow) and a per-parcel standard-normal brightness offset (float32).
    """
    strip_of_row = np.repeat(np.arange(height // 16 + 1), rng.integers(16, 49, height // 16 + 1))
    strips = int(strip_of_row[height - 1]) + 1
    columns = np.repeat(np.arange(width // 16 + 5), rng.integers(16, 65, width // 16 + 5))
    shift = rng.integers(0, 64, strips)
    column_of = columns[shift[:, None] + np.arange(width)]  # parcel column, per strip
    shape = (strips, int(columns[-1]) + 1)
    kinds = np.array([_CROPLAND, _BARE_SOIL, _VEGETATION], dtype=np.uint8)
    classes = rng.choice(kinds, size=shape, p=[0.65, 0.2, 0.15])
    brightness = rng.standard_normal(shape, dtype=np.float32)
    strip, rows = np.arange(strips)[:, None], strip_of_row[:height]
    return classes[strip, column_of][rows], brightness[strip, column_of][rows]


def _land_cover(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8 class ids) and per-parcel brightness, from ``seed`` and size only.

    Natural land is vegetation with patches of bare soil; an agricultural zone (~60 %) is cut
    into parcels; built-up clusters and water (lakes and meandering rivers) are laid on top.
    """
    rng = _rng(seed, 0)
    field = _noise(rng, height, width, (128, 64, 32))
    labels = np.full((height, width), _BARE_SOIL, dtype=np.uint8)
    labels[field > _quantile(field, 0.3)] = _VEGETATION
    parcel_class, parcel_brightness = _parcels(rng, height, width)
    field = _noise(rng, height, width, (256, 128, 64))
    np.copyto(labels, parcel_class, where=field > _quantile(field, 0.4))
    field = _noise(rng, height, width, (64, 32, 16))
    labels[field > _quantile(field, 0.88)] = _BUILT_UP
    field = _noise(rng, height, width, (192, 96, 48))
    labels[field < _quantile(field, 0.05)] = _WATER
    field = np.abs(_noise(rng, height, width, (320, 80)))
    labels[field < _quantile(field, 0.04)] = _WATER
    return labels, parcel_brightness


def growth_region(
    height: int,
    width: int,
    built_up_growth: float,
    growth_center: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """Boolean (y, x) mask of the construction disc used by :func:`make_scene`.

    The disc is centred at ``growth_center`` = (x, y) as fractions of width and height from
    the upper-left corner, and its area is ``built_up_growth * 25 %`` of the scene (less
    where it leaves the scene). Inside it, all land except water becomes built-up.
    """
    height, width = check_integer("height", height, 1), check_integer("width", width, 1)
    growth = check_number("built_up_growth", built_up_growth, 0, 1)
    cx, cy = check_pair("growth_center", growth_center, 0, 1)
    radius2 = growth * _MAX_GROWTH_AREA * height * width / math.pi
    dy2 = ((np.arange(height, dtype=np.float32) + 0.5 - cy * height) ** 2)[:, None]
    dx2 = (np.arange(width, dtype=np.float32) + 0.5 - cx * width) ** 2
    return dy2 + dx2 < radius2


def _class_reflectance(season: float) -> np.ndarray:
    """Mean reflectance per (class, band) at ``season``: summer for season >= 0, winter at -1."""
    dormancy = np.float32(max(0.0, -season))
    return (1 - dormancy) * CLASS_REFLECTANCE + dormancy * CLASS_REFLECTANCE_WINTER


def _render(
    labels: np.ndarray,
    brightness: np.ndarray,
    vigour: np.ndarray,
    noise_rng: np.random.Generator,
    cloud_opacity: np.ndarray | None,
    rock: np.ndarray,
    *,
    season: float,
    gain: float,
    offset: float,
) -> np.ndarray:
    """Quantised (band, y, x) uint16 scene, one band at a time to bound memory.

    Reflectance is ``mean * (1 + cv * (brightness + loading * vigour)) + noise`` (``cv`` from
    :data:`CLASS_VARIABILITY`, uniform noise of std 0.003), blended towards cloud reflectance
    by ``cloud_opacity``, then recalibrated and scaled. Bare soil's mean moves towards
    :data:`BARE_ROCK_REFLECTANCE` by ``rock`` (0 elsewhere). Overwrites ``brightness`` and
    ``vigour``.
    """
    variability = CLASS_VARIABILITY[labels]
    brightness *= variability
    brightness += 1
    vigour *= variability
    del variability
    scale = np.float32(gain * REFLECTANCE_SCALE)
    means = _class_reflectance(season) * scale
    noise_range = np.float32(_NOISE_STD * math.sqrt(12)) * scale
    rock_shift = (BARE_ROCK_REFLECTANCE - CLASS_REFLECTANCE[_BARE_SOIL]) * scale
    scene = np.empty((len(BANDS), *labels.shape), dtype=np.uint16)
    pixel, spread = np.empty((2, *labels.shape), dtype=np.float32)
    for band in range(len(BANDS)):
        np.multiply(vigour, np.float32(_VIGOUR_LOADING[band]), out=spread)
        spread += brightness
        np.take(means[:, band], labels, out=pixel)
        pixel += rock * rock_shift[band]
        pixel *= spread
        noise_rng.random(dtype=np.float32, out=spread)
        spread -= np.float32(0.5)
        spread *= noise_range
        pixel += spread
        if cloud_opacity is not None:  # pixel += opacity * (cloud - pixel)
            np.subtract(_CLOUD_REFLECTANCE[band] * scale, pixel, out=spread)
            spread *= cloud_opacity
            pixel += spread
        pixel += np.float32(offset * REFLECTANCE_SCALE + 0.5)  # + 0.5: round on the cast
        np.clip(pixel, 1, REFLECTANCE_SCALE, out=pixel)
        scene[band] = pixel
    return scene


def _georeference(
    data: np.ndarray,
    band_names: tuple[str, ...] | None,
    *,
    transform: Affine,
    crs: CRS,
    nodata: int,
) -> xr.DataArray:
    """Wrap an array as a rioxarray-georeferenced DataArray with pixel-centre coordinates."""
    height, width = data.shape[-2:]
    coords = {
        "y": transform.f + (np.arange(height) + 0.5) * transform.e,
        "x": transform.c + (np.arange(width) + 0.5) * transform.a,
    }
    dims: tuple[str, ...] = ("y", "x")
    if band_names is not None:
        coords["band"] = np.array(band_names)
        dims = ("band", *dims)
    array = xr.DataArray(data, dims=dims, coords=coords)
    array.rio.write_crs(crs, inplace=True).rio.write_transform(transform, inplace=True)
    return array.rio.write_nodata(nodata, encoded=False, inplace=True)


def make_scene(
    height: int = 512,
    width: int = 512,
    *,
    seed: int = 0,
    resolution: float = 10.0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    season: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
    cloud_cover: float = 0.0,
    built_up_growth: float = 0.0,
    growth_center: tuple[float, float] = (0.5, 0.5),
    nodata: int = 0,
    acquisition: int = 0,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Generate one synthetic Sentinel-2-like scene and its ground-truth labels.

    Parameters
    ----------
    height, width
        Size in pixels (>= 1).
    seed
        Seed (>= 0) of the label layout and surface texture.
    resolution, crs, origin
        Pixel size in CRS units, CRS, and (x, y) of the upper-left corner: the transform is
        ``Affine(resolution, 0, x0, 0, -resolution, y0)``.
    season
        Phenology in [-1, 1]: 0 or above is summer; towards -1 (winter) vegetation loses NIR
        and gains red, and cropland turns into ploughed soil (linear blend of
        :data:`CLASS_REFLECTANCE` and :data:`CLASS_REFLECTANCE_WINTER` by ``max(0, -season)``).
    gain, offset
        Sensor recalibration applied to all reflectance before quantisation:
        ``reflectance * gain + offset``; gain > 0, offset in [-1, 1].
    cloud_cover
        Share of the scene, in [0, 1], under bright clouds (opacity >= 0.5, soft edges).
        Clouds never change the labels.
    built_up_growth, growth_center
        Construction: in :func:`growth_region` (area ``built_up_growth * 25 %`` of the scene
        around (x, y) fractions ``growth_center``) all non-water land becomes built-up.
    nodata
        Nodata value of the scene: 0 or above 10000 (valid pixels are 1..10000). The
        generated scene has no nodata pixels.
    acquisition
        Index (>= 0) of the acquisition: varies sensor noise and cloud placement, nothing else.

    Returns
    -------
    scene, labels
        ``scene``: uint16 (band, y, x), reflectance x 10000, band coordinate :data:`BANDS`.
        ``labels``: uint8 (y, x) indices into :data:`CLASSES`, nodata 255. Both carry CRS,
        transform and nodata through rioxarray.
    """
    height, width = check_integer("height", height, 1), check_integer("width", width, 1)
    seed = check_integer("seed", seed, 0)
    acquisition = check_integer("acquisition", acquisition, 0)
    resolution = check_number("resolution", resolution, 0, math.inf, open_low=True)
    x0, y0 = check_pair("origin", origin, -math.inf, math.inf)
    season = check_number("season", season, -1, 1)
    gain = check_number("gain", gain, 0, math.inf, open_low=True)
    offset = check_number("offset", offset, -1, 1)
    cloud_cover = check_number("cloud_cover", cloud_cover, 0, 1)
    region = growth_region(height, width, built_up_growth, growth_center)
    nodata = check_integer("nodata", nodata, 0, np.iinfo(np.uint16).max)
    if 1 <= nodata <= REFLECTANCE_SCALE:
        raise ValueError(
            f"nodata must be 0 or in [{REFLECTANCE_SCALE + 1}, 65535] because valid pixels "
            f"use 1..{REFLECTANCE_SCALE}, got {nodata!r}."
        )
    try:
        crs_obj = CRS.from_user_input(crs)
    except (CRSError, TypeError, ValueError) as error:
        raise InvalidCRSError(
            f"crs must be a CRS that rasterio understands, such as 'EPSG:32633', got {crs!r}."
        ) from error

    labels, parcel_brightness = _land_cover(seed, height, width)
    labels[region & (labels != _WATER)] = _BUILT_UP

    texture_rng = _rng(seed, 1)
    brightness = _noise(texture_rng, height, width, (32, 16, 8))
    vigour = _noise(texture_rng, height, width, (48, 24, 12))
    crop = labels == _CROPLAND
    brightness[crop] = 0.6 * brightness[crop] + 0.8 * parcel_brightness[crop]
    del parcel_brightness, crop

    rock = _noise(_rng(seed, 4), height, width, (64, 32))
    rock *= np.float32(0.6)
    rock += np.float32(0.5)
    np.clip(rock, 0, 1, out=rock)
    rock[labels != _BARE_SOIL] = 0

    cloud_opacity = None
    if cloud_cover > 0:
        field = _noise(_rng(seed, 3, acquisition), height, width, (128, 64, 32, 16))
        field -= _quantile(field, 1 - cloud_cover)
        field *= np.float32(0.5 / _CLOUD_EDGE)
        field += np.float32(0.5)
        cloud_opacity = np.clip(field, 0, 1, out=field)

    data = _render(
        labels, brightness, vigour, _rng(seed, 2, acquisition), cloud_opacity, rock,
        season=season, gain=gain, offset=offset,
    )
    transform = Affine(resolution, 0.0, x0, 0.0, -resolution, y0)
    scene = _georeference(data, BANDS, transform=transform, crs=crs_obj, nodata=nodata)
    scene.attrs["long_name"] = BANDS
    label_array = _georeference(
        labels, None, transform=transform, crs=crs_obj, nodata=LABEL_NODATA
    )
    label_array.attrs.update(long_name="land cover class", classes=CLASSES)
    return scene, label_array


def season_for(date: dt.date) -> float:
    """Season of a date as used by :func:`make_series`.

    ``season = cos(2 * pi * (day_of_year - 196) / 365.25)``: +1 on 15 July, about -1 in
    mid-January, 0 around 15 April and 14 October. Since :func:`make_scene` treats every
    season >= 0 as summer, the canopy is full from late April to early October.
    """
    day_of_year = date.timetuple().tm_yday
    return math.cos(2 * math.pi * (day_of_year - _PEAK_SUMMER_DOY) / 365.25)
