"""ModelInput (issue #22): raw tile values -> the model's input, written straight into a
batch slot; the same floats as numpy's normalise and as the NaN-marked whole-scene input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seamline.core.predict.inputs import ModelInput
from seamline.core.prepare.bandstats import BandStats, normalise

BANDS = ["blue", "green", "red", "nir"]
STATS = BandStats(bands=BANDS, mean=[900.0, 1100.0, 1300.0, 2500.0], std=[300.0, 0.0, 410.5, 777.0],
                  p02=[0.0] * 4, p98=[1.0] * 4, count=100)  # fmt: skip


def _raw(dtype, *, seed: int, side: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4000, (4, side, side)).astype(dtype)
    values[:, :5, :] = 0  # nodata in every band: no data there
    values[1, 10:15, :] = 0  # nodata in one band only: that band NaN, the pixel still data
    if np.dtype(dtype).kind == "f":
        values[2, 20:22, :] = np.nan  # a band without data where the others hold it
        values[:, 30:33, :6] = np.nan  # no band holds data
        values[3, 35, 7] = np.inf
    return values


def _expected(values: np.ndarray, names: list[str], nodata: float | None) -> np.ndarray:
    """numpy's normalise of a scene with these bands (it orders them as the statistics do),
    NaN where a band holds no data, in every band where no band does."""
    import xarray as xr

    side = values.shape[-1]
    scene = xr.DataArray(values, dims=("band", "y", "x"), coords={
        "band": names, "y": 10.0 * np.arange(side)[::-1],
        "x": 10.0 * np.arange(side)})  # fmt: skip
    scene = scene.rio.write_crs("EPSG:32633").rio.write_nodata(nodata)
    out = normalise(scene, STATS).values
    finite = np.isfinite(values) & (values != nodata if nodata is not None else True)
    out[:, ~finite.any(0)] = np.nan
    return out


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "float64"])
@pytest.mark.parametrize("reorder", [False, True])
def test_into_a_channels_last_slot_equals_the_nan_input_with_nan_as_zero(dtype, reorder):
    perm = [2, 0, 3, 1] if reorder else [0, 1, 2, 3]  # the scene's bands, as the model's
    values = _raw(dtype, seed=len(dtype))[perm]
    order = tuple(int(i) for i in np.argsort(perm))  # the model's band k is scene band order[k]
    offset, scale = STATS.offset_scale("zscore")
    prepare = ModelInput(order, tuple(offset.tolist()), tuple(scale.tolist()), 0.0)
    whole = prepare(torch.from_numpy(values))
    expected = _expected(values, [BANDS[i] for i in perm], 0.0)
    np.testing.assert_array_equal(whole.numpy(), expected)  # NaN where NaN
    slot = torch.full((1, 4, 40, 40), 7.0).contiguous(memory_format=torch.channels_last)[0]
    assert prepare.into(torch.from_numpy(values), slot) is True
    assert torch.equal(slot, torch.nan_to_num(whole, nan=0.0))  # bit for bit, in place


def test_a_tile_without_data_is_zero_and_says_so():
    prepare = ModelInput((0, 1), None, None, 0.0)
    slot = torch.full((2, 8, 8), 5.0)
    assert prepare.into(torch.zeros(2, 8, 8, dtype=torch.int16), slot) is False
    assert not slot.any()
    assert prepare.into(torch.full((2, 8, 8), float("nan")), slot) is False
    nodata_free = ModelInput((0, 1), None, None, None)  # integers, no nodata: all data
    assert nodata_free.into(torch.zeros(2, 8, 8, dtype=torch.uint8), slot) is True
    assert bool(nodata_free.valid(torch.zeros(2, 8, 8, dtype=torch.uint8)).all())


def test_a_band_without_data_is_the_same_input_whatever_its_encoding():
    """An outside review: an integer band's nodata value was fed as a value (z-scored) and a
    float band's NaN as 0, so 24.5 % of the pixels of a block without NIR changed class
    between the two encodings of one scene."""
    offset, scale = (tuple(v.tolist()) for v in STATS.offset_scale("zscore"))
    ints = _raw("uint16", seed=3)
    floats = np.where(ints == 0, np.nan, ints).astype("float32")  # nodata as NaN
    as_ints, as_floats = ModelInput((0, 1, 2, 3), offset, scale, 0.0), ModelInput(
        (0, 1, 2, 3), offset, scale, None)  # fmt: skip
    np.testing.assert_array_equal(as_ints(torch.from_numpy(ints)).numpy(),
                                  as_floats(torch.from_numpy(floats)).numpy())  # fmt: skip
    slots = torch.full((2, 4, 40, 40), 7.0)
    assert as_ints.into(torch.from_numpy(ints), slots[0])
    assert as_floats.into(torch.from_numpy(floats), slots[1])
    assert torch.equal(slots[0], slots[1]) and not bool(slots[0][1, 10:15].any())
