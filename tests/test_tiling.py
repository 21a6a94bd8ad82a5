"""Tiled inference: grid rules, blend weights, and seam-freeness against the untiled output."""

import pickle
import threading
import time

import numpy as np
import pytest
import torch

from seamline.core.demo.unet import ConvNet
from seamline.core.errors import InvalidArgumentError
from seamline.core.predict.tiling import (
    Blend,
    TileGrid,
    axis_starts,
    blend_profiles,
    predict_tiled,
    seam_errors,
    untiled,
)

BLENDS = ["crop", "linear", "cosine", "gaussian"]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ConvNet(bands=3, classes=4, width=8, depth=4).eval()  # radius 4


@pytest.mark.parametrize("length, tile, overlap, align", [
    (1000, 256, 32, 1), (257, 256, 0, 1), (999, 128, 64, 8), (4096, 512, 64, 1), (300, 64, 8, 4),
])
def test_axis_starts_cover_with_fewest_tiles_and_end_at_border(length, tile, overlap, align):
    padded = TileGrid(length, length, tile, overlap, Blend.CROP, align).padded_shape[0]
    starts = axis_starts(padded, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] + tile == padded  # last tile shifted back to the border
    assert padded - length < align  # never a tile that is mostly padding
    assert (np.diff(starts) > 0).all() and (starts % align == 0).all()
    assert (starts[:-1] + tile - starts[1:] >= overlap).all()  # neighbours overlap enough
    stride = (tile - overlap) // align * align
    assert len(starts) == max(1, int(np.ceil((padded - tile) / stride)) + 1)  # fewest tiles


@pytest.mark.parametrize("blend", ["linear", "cosine", "gaussian", "crop"])
def test_weights_sum_to_one_and_never_taper_at_the_outer_border(blend):
    grid = TileGrid(300, 517, 128, 32, Blend(blend))
    np.testing.assert_allclose(grid.weight_map(), 1.0, atol=1e-6)
    wy, wx = grid.profiles()
    assert wy[0, 0] == 1 and wy[-1, -1] == 1 and wx[0, 0] == 1 and wx[-1, -1] == 1


def test_profiles_taper_only_where_tiles_overlap():
    starts = axis_starts(400, 128, 32)
    profiles = blend_profiles(starts, 128, 400, Blend.COSINE)
    overlap_next = starts[0] + 128 - starts[1]
    assert (profiles[0, : 128 - overlap_next] == 1).all()
    assert profiles[0, -1] == 0 and 0 < profiles[0, 128 - overlap_next // 2] < 1


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape", [(300, 517), (129, 130), (50, 70), (1, 1), (7, 300)])
@pytest.mark.parametrize("overlap", [16, 40, 100])
def test_tiled_equals_untiled(net, blend, shape, overlap):
    rng = np.random.default_rng(sum(shape))
    image = rng.normal(size=(3, *shape)).astype(np.float32)
    reference = untiled(net, image, device="cpu")
    if min(shape) < 128:
        # Smaller than a tile: reflection padding changes what the model sees near the
        # far border, so only the pixels further than the receptive field are comparable.
        tiled = predict_tiled(net, image, tile_size=128, overlap=overlap, blend=blend)
        assert tiled.shape == (4, *shape)
        r = net.receptive_radius
        inner = (slice(None), slice(0, max(0, shape[0] - r)), slice(0, max(0, shape[1] - r)))
        np.testing.assert_allclose(tiled[inner], reference[inner], atol=1e-5)
        return
    tiled = predict_tiled(net, image, tile_size=128, overlap=overlap, blend=blend, batch_size=3)
    errors = seam_errors(tiled, reference)
    if blend == "crop":
        assert errors["max_abs"] <= 1e-5
    else:
        assert errors["rel_l2"] <= 1e-3
    assert errors["border_rel_l2"] <= 1e-3  # no band of degraded pixels along the border


def test_seed_like_border_taper_is_detected_by_seam_errors(net):
    image = np.random.default_rng(0).normal(size=(3, 200, 200)).astype(np.float32)
    reference = untiled(net, image, device="cpu")
    degraded = reference.copy()
    degraded[:, :3, :] *= 0.5
    errors = seam_errors(degraded, reference)
    assert errors["border_rel_l2"] > 10 * errors["interior_rel_l2"]


def test_pooling_model_needs_aligned_tiles():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Upsample(scale_factor=2),
        torch.nn.Conv2d(4, 3, 3, padding=1),
    ).eval()
    image = np.random.default_rng(2).normal(size=(2, 202, 198)).astype(np.float32)
    reference = untiled(model, image, device="cpu")
    tiled = predict_tiled(model, image, tile_size=64, overlap=32, blend="crop", align=2)
    assert (axis_starts(202, 64, 32, align=2) % 2 == 0).all()
    np.testing.assert_allclose(tiled, reference, atol=1e-5)


def test_batch_size_progress_tensor_input_and_nan(net):
    image = np.random.default_rng(3).normal(size=(3, 150, 260)).astype(np.float32)
    calls = []
    a = predict_tiled(net, image, tile_size=64, overlap=16, batch_size=1,
                      progress=lambda d, t: calls.append((d, t)))
    b = predict_tiled(net, torch.from_numpy(image), tile_size=64, overlap=16, batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-5)
    total = len(TileGrid(150, 260, 64, 16, Blend.COSINE))
    assert calls[-1] == (total, total) and len(calls) == total
    image[:, :10, :10] = np.nan
    assert np.isfinite(predict_tiled(net, image, tile_size=64, overlap=16)).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"overlap": 64}, "overlap must be >= 0 and < tile_size"),
    ({"overlap": -1}, "overlap must be >= 0"),
    ({"tile_size": 0}, "tile_size must be >= 1"),
    ({"blend": "cosin"}, "Did you mean 'cosine'"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"device": "gpu7"}, "Unknown device"),
])
def test_invalid_arguments_raise_value_error(net, kwargs, message):
    args = {"tile_size": 64, "overlap": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        predict_tiled(net, np.zeros((3, 10, 10), dtype=np.float32), **args)
    assert issubclass(InvalidArgumentError, ValueError)


class _ParallelNet(torch.nn.Module):
    """Wraps a net; offers a forward whose first two calls only return once both are in
    flight together."""

    def __init__(self, net: torch.nn.Module, calls: int = 2) -> None:
        super().__init__()
        self.net, self.calls = net, calls
        self.together = threading.Barrier(calls, timeout=10)
        self.threads: set[str] = set()
        self.started: list[int] = []
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def parallel_forward(self):
        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.lock:
                self.threads.add(threading.current_thread().name)
                first = len(self.started) < self.calls
                self.started.append(x.shape[0])
            if first:  # BrokenBarrierError (after 10 s) if they ran one at a time
                self.together.wait()
            return self.net(x)

        return forward, self.calls


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_a_model_offering_parallel_calls_gets_them_with_the_same_result(net, blend):
    image = np.random.default_rng(7).normal(size=(3, 100, 90)).astype(np.float32)
    image[:, 10:20, 30:40] = np.nan
    kw = {"tile_size": 32, "overlap": 8, "blend": blend, "device": "cpu"}
    serial = predict_tiled(net, image, **kw)
    seen = []
    parallel_net = _ParallelNet(net)
    timed = []
    parallel = predict_tiled(parallel_net, image, batch_size=2, progress=lambda *a: seen.append(a),
                             timing=lambda *a: timed.append(a), **kw)  # fmt: skip
    np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6)
    assert len(parallel_net.threads) == 2  # two worker threads, none of them the caller
    assert threading.current_thread().name not in parallel_net.threads
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1]  # progress in order, to the end
    assert sum(tiles for _, tiles in timed) == seen[-1][1] and len(timed) == len(seen)
    assert all(seconds > 0 for seconds, _ in timed)  # a call's time over the 2 in flight


def test_a_freed_parallel_call_runs_the_waiting_batch_while_the_caller_blends(net):
    """One batch more than the calls waits in flight: while the caller blends (and writes) a
    finished call's tiles, the freed thread already runs the next batch. Before, it waited
    for the caller: at 4096^2 the two INT8 sessions idled ~0.37 s each, every tile row."""
    started: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            return net(x)

        def parallel_forward(self):
            def forward(x):
                started.append(x.shape[0])
                return net(x)

            return forward, 2

    seen = []

    def progress(done: int, total: int) -> None:
        if done == 1:  # the caller has the first batch: does a third call start meanwhile?
            deadline = time.monotonic() + 5
            while len(started) < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            seen.append(len(started))

    image = np.random.default_rng(3).normal(size=(3, 32, 128)).astype(np.float32)
    kw = {"tile_size": 32, "overlap": 8, "device": "cpu"}
    out = predict_tiled(Counting(), image, batch_size=1, progress=progress, **kw)
    assert seen == [3]  # with only the calls in flight, the third waited for this caller
    np.testing.assert_allclose(out, predict_tiled(net, image, **kw), rtol=1e-5, atol=1e-6)


def test_an_error_in_a_parallel_call_reaches_the_caller(net):
    class Failing(_ParallelNet):
        def parallel_forward(self):
            def forward(x):
                raise RuntimeError("tile failed")

            return forward, 2

    with pytest.raises(RuntimeError, match="tile failed"):
        predict_tiled(Failing(net), np.zeros((3, 64, 64), np.float32), tile_size=32, overlap=8)


def test_a_lone_batch_runs_on_the_model_itself_in_the_callers_thread(net):
    parallel_net = _ParallelNet(net)  # its parallel forward would wait 10 s for a partner
    image = np.random.default_rng(8).normal(size=(3, 40, 40)).astype(np.float32)
    out = predict_tiled(parallel_net, image, tile_size=64, overlap=8, device="cpu")
    np.testing.assert_allclose(out, predict_tiled(net, image, tile_size=64, overlap=8), atol=1e-6)
    assert parallel_net.threads == set()  # the lowest latency for one tile: all cores, one call


def test_timing_shares_a_call_among_the_calls_really_in_flight(net):
    durations = []

    class Wide(torch.nn.Module):  # offers 4 calls in flight; the image makes only 2 batches
        def forward(self, x):
            return net(x)

        def parallel_forward(self):
            def forward(x):
                start = time.perf_counter()
                out = net(x)
                time.sleep(0.02)
                durations.append(time.perf_counter() - start)
                return out

            return forward, 4

    timed = []
    image = np.zeros((3, 32, 56), np.float32)  # two 32 x 32 tiles
    predict_tiled(Wide(), image, tile_size=32, overlap=8, batch_size=1,
                  timing=lambda *a: timed.append(a))  # fmt: skip
    assert len(timed) == len(durations) == 2
    assert min(s for s, _ in timed) >= min(durations) / 2  # 2 in flight, not 4


def test_threads_sharing_a_fresh_module_get_the_same_tiles_as_one_thread():
    """Two dask worker threads share one unpickled model: converting it to channels-last in
    both at once left a weight with mixed strides and every later tile wrong (relative L2 1.2
    in test_distributed)."""
    from seamline.core.models.modelio import load_model

    blob = pickle.dumps(load_model("demo").module)  # contiguous weights, as a worker gets them
    images = np.random.default_rng(9).normal(size=(2, 6, 96, 96)).astype(np.float32)
    tiling = {"tile_size": 64, "overlap": 16, "blend": "crop", "align": 8}
    expected = [predict_tiled(pickle.loads(blob), image, **tiling) for image in images]
    for _ in range(12):  # the race showed in ~1 of 8 rounds of two threads
        module, got = pickle.loads(blob), [None, None]

        def run(k, module=module, got=got):
            got[k] = predict_tiled(module, images[k], **tiling)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k in range(2):
            np.testing.assert_array_equal(got[k], expected[k])


def test_a_placed_module_is_not_converted_again(net, monkeypatch):
    image = np.zeros((3, 40, 40), np.float32)
    predict_tiled(net, image, tile_size=32, overlap=8)  # places it: channels-last on the CPU
    calls = []
    monkeypatch.setattr(net, "to", lambda *a, **k: calls.append((a, k)))
    predict_tiled(net, image, tile_size=32, overlap=8)
    untiled(net, image)
    assert calls == []  # a thread in its forward never sees its weights re-assigned


# MONAI's sliding-window test cases (tests/inferers/test_sliding_window_inference.py,
# TEST_CASES and the 2-D windows of its buffer tests), ported to predict_tiled's square tiles
# and pixel overlaps: (bands, height, width), tile side, batch size, overlap as a fraction.
# A pointwise model's tiled output must be its untiled output, for every blend. Not ported:
# test_sigma and test_cval (they pin MONAI's constant padding and its border-tapering
# Gaussian, which Seamline replaces by reflection and untapered borders on purpose), the
# multi-output cases (lower-resolution heads are upsampled by the model adapter,
# core/models/outputs.py, before tiling) and the 1-D, 3-D and 4-D cases.
MONAI_CASES = [
    ((3, 15, 7), 2, 1000, 0.25),  # 2-D small roi, large batch
    ((3, 15, 7), 6, 1000, 0.25),
    ((3, 16, 7), 80, 7, 0.25),  # 2-D large roi: one tile larger than the image
    ((3, 16, 7), 80, 7, 0.5),  # large overlap
    ((3, 10, 11), 7, 5, 0.8),
    ((3, 10, 11), 15, 2, 0.0),
    ((3, 10, 11), 10, 3, 0.0),
    ((3, 511, 237), 96, 5, 0.4),
    ((3, 512, 245), 96, 5, 0.0),
    ((3, 512, 245), 512, 5, 0.125),
]


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize(("shape", "tile", "batch", "fraction"), MONAI_CASES)
def test_monai_sliding_window_cases(shape, tile, batch, fraction, blend):
    overlap = int(tile * fraction)
    inputs = {
        "arange": np.arange(np.prod(shape), dtype=np.float32).reshape(shape),  # MONAI "constant"
        "random": np.random.default_rng(0).integers(0, 255, shape).astype(np.float32),
    }
    for image in inputs.values():
        for model, expected in ((lambda x: x + 1, image + 1), (lambda x: 2 * x, 2 * image)):
            out = predict_tiled(model, image, tile_size=tile, overlap=overlap, blend=blend,
                                batch_size=batch, device="cpu")  # fmt: skip
            np.testing.assert_allclose(out, expected, rtol=1e-6)
