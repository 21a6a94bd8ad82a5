"""Robustness with generated inputs (hypothesis): malformed GeoTIFF bytes, AOI files and
request parameters get a 4xx or one clear SeamlineError, never a 500, a crash or a hang,
and the service keeps answering /health.

Each target runs ``SEAMLINE_FUZZ_EXAMPLES`` examples (default 50: the suite stays fast);
``benchmarks/fuzz.py`` runs a long campaign by raising it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import redirect_stderr
from datetime import timedelta
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile

from seamline.app.cli import EXIT_USER_ERROR, main
from seamline.app.service import create_app
from seamline.core.data.files import quiet_undecodable_gdal_messages
from seamline.core.data.io import geotiff_bytes, read_geotiff_bytes
from seamline.core.data.limits import InputBudget
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import SeamlineError
from seamline.core.models.modelio import load_model
from tests.conftest import write_tif

EXAMPLES = int(os.environ.get("SEAMLINE_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=15),  # "no hang": generous, CI machines are shared
    database=None,
    derandomize="SEAMLINE_FUZZ_EXAMPLES" not in os.environ,  # the suite: same inputs each run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BUDGET = InputBudget(max_bytes=2**20, max_pixels=512 * 512 * 6)
TIFF = {"content-type": "image/tiff"}
ANSWERS = {200, 401, 404, 405, 413, 415, 422}


def _seeds() -> list[bytes]:
    """Real GeoTIFFs to mutate: tiled deflate uint16, striped float32, a 1-band uint8."""
    scene = make_scene(40, 48, seed=5)[0]
    with tempfile.TemporaryDirectory() as tmp:
        striped = write_tif(Path(tmp) / "f.tif", scene.values[:, :16, :16].astype(np.float32))
        small = write_tif(Path(tmp) / "b.tif", np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
        return [geotiff_bytes(scene), striped.read_bytes(), small.read_bytes()]


SEEDS = _seeds()


def _ifd_entries(data: bytes) -> list[int]:
    """Offsets of the 12-byte entries of a little-endian classic TIFF's first IFD."""
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd : ifd + 2], "little")
    return [ifd + 2 + 12 * i for i in range(count)]


_INTERESTING = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 16, 255, 256, 65535, 2**16, 2**31 - 1, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)


@st.composite
def broken_tiffs(draw) -> bytes:
    """Random bytes; a TIFF magic followed by garbage; a real GeoTIFF truncated, with bits
    flipped, or with a tag of its first IFD rewritten (type, count or value: widths,
    sample formats, compression, tile offsets, GeoKeys...)."""
    seed = draw(st.sampled_from(SEEDS))
    kind = draw(st.sampled_from(["random", "magic", "truncated", "flipped", "tag", "tag"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "magic":
        magic = draw(st.sampled_from([b"II*\0", b"MM\0*", b"II+\0"]))
        return magic + draw(st.binary(max_size=512))
    if kind == "truncated":
        return seed[: draw(st.integers(0, len(seed) - 1))]
    data = bytearray(seed)
    if kind == "flipped":
        for _ in range(draw(st.integers(1, 8))):
            end = min(len(data), draw(st.sampled_from([64, 512, len(data)])))
            data[draw(st.integers(0, end - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    for _ in range(draw(st.integers(1, 3))):
        entry = draw(st.sampled_from(_ifd_entries(seed)))
        field, size = draw(st.sampled_from([(2, 2), (4, 4), (8, 4), (8, 2)]))  # type, count, value
        value = draw(_INTERESTING) % 2 ** (8 * size)
        data[entry + field : entry + field + size] = value.to_bytes(size, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def client():
    """The service around a pointwise model (1x1 convolution): parsing, not the U-Net's
    FLOPs, is what is fuzzed; the demo's bands, classes and statistics are kept."""
    demo = load_model("demo")
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(len(demo.bands), len(demo.classes), 1).eval()
    model = demo.with_module(pointwise, precision="fp32")
    model = type(model)(**{**model.__dict__, "align": 1, "receptive_radius": 0,
                           "name": "pointwise"})  # fmt: skip
    with TestClient(create_app(model, precision="fp32", budget=BUDGET, tile_size=64,
                               overlap=16), raise_server_exceptions=False) as c:  # fmt: skip
        yield c
    assert c.get("/health").status_code == 200


def _still_serving(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"


@FUZZ
@given(data=broken_tiffs())
def test_malformed_geotiff_bytes_are_read_or_refused_in_one_sentence(data):
    try:
        scene = read_geotiff_bytes(data, budget=BUDGET)
    except SeamlineError as exc:
        assert "\n" not in str(exc) and str(exc).endswith(".")
    else:
        assert scene.dims == ("band", "y", "x")


def _prepare(raster: bytes, aoi: bytes | None = None, suffix: str = ".geojson") -> tuple[int, str]:
    """``seamline prepare`` on these bytes (and AOI): exit status and stderr; the output
    exists exactly when it succeeded."""
    with tempfile.TemporaryDirectory() as tmp:
        scene, out, err = Path(tmp) / "scene.tif", Path(tmp) / "out.tif", StringIO()
        scene.write_bytes(raster)
        argv = ["prepare", str(scene), str(out)]
        if aoi is not None:
            (Path(tmp) / f"aoi{suffix}").write_bytes(aoi)
            argv += ["--aoi", str(Path(tmp) / f"aoi{suffix}")]
        with redirect_stderr(err):
            code = main(argv)
        assert code in (0, EXIT_USER_ERROR) and "Traceback" not in err.getvalue()
        assert code == 0 or err.getvalue().count("\n") == 1
        assert out.exists() == (code == 0)
        return code, err.getvalue()


@FUZZ
@given(data=broken_tiffs())
def test_malformed_geotiff_files_through_prepare_are_one_sentence(data):
    _prepare(data)


@FUZZ
@given(data=broken_tiffs())
def test_malformed_uploads_get_a_4xx_never_a_500(client, data):
    r = client.post("/predict", content=data, headers=TIFF)
    assert r.status_code in ANSWERS - {401, 404, 405}, r.text
    if r.status_code != 200:
        assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    _still_serving(client)


_text = st.text(max_size=20)
_numberish = st.one_of(
    st.integers(-(2**70), 2**70).map(str), _text,
    st.sampled_from(["", "nan", "1e3", "0x10", " 64", "64.0", "-0"]),
)  # fmt: skip


@FUZZ
@given(
    params=st.dictionaries(
        st.one_of(st.sampled_from(["tile_size", "overlap", "blend"]), _text),
        st.one_of(_numberish, st.sampled_from(["crop", "linear", "cosine", "gaussian"])),
        max_size=4,
    ),
    raw=st.text(max_size=40),
    method=st.sampled_from(["POST", "GET", "PUT"]),
    media=st.sampled_from(["image/tiff", "application/octet-stream", "text/plain", ""]),
)
def test_request_parameters_get_a_4xx_never_a_500(client, params, raw, method, media):
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    query += "&" + quote(raw, safe="=&%+;")  # malformed escapes on purpose
    r = client.request(method, f"/predict?{query}", content=SEEDS[0],
                       headers={"content-type": media} if media else {})  # fmt: skip
    assert r.status_code in ANSWERS, r.text
    _still_serving(client)


_coordinate = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e3, 1e3),
    st.integers(-(2**64), 2**64),
    st.text(max_size=3),
)
_position = st.lists(_coordinate, min_size=0, max_size=4)
_geometry = st.fixed_dictionaries({
    "type": st.sampled_from(["Point", "LineString", "Polygon", "MultiPolygon",
                             "GeometryCollection", "Feature", "Circle", ""]),
    "coordinates": st.recursive(_position, lambda inner: st.lists(inner, max_size=5),
                                max_leaves=30),
})  # fmt: skip
_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip


@st.composite
def aoi_documents(draw) -> bytes:
    """GeoJSON garbage: bytes, any JSON, or FeatureCollections of wrong or broken geometries
    (around the test raster, or anywhere), with and without a CRS member."""
    kind = draw(st.sampled_from(["bytes", "json", "features"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    features = [{"type": "Feature", "properties": draw(st.dictionaries(_text, _json, max_size=2)),
                 "geometry": draw(st.one_of(st.none(), _geometry))}
                for _ in range(draw(st.integers(0, 3)))]  # fmt: skip
    doc = {"type": "FeatureCollection", "features": features}
    if draw(st.booleans()):
        doc["crs"] = {
            "type": "name",
            "properties": {
                "name": draw(
                    st.sampled_from(
                        ["EPSG:32633", "urn:ogc:def:crs:EPSG::32633", "EPSG:99999", "nonsense"]
                    )
                )
            },
        }
    return json.dumps(doc, allow_nan=True).encode()


@FUZZ
@given(document=aoi_documents(), suffix=st.sampled_from([".geojson", ".json", ".gpkg"]))
def test_broken_aoi_files_through_prepare_are_one_sentence(document, suffix):
    _prepare(SEEDS[2], document, suffix)


def test_corrupt_pixel_data_found_by_fuzzing_is_one_sentence(tmp_path, capsys):
    """Regression: a valid header over a corrupt deflate stream read lazily by prepare
    escaped as a RasterioIOError traceback ("Read failed. See previous exception")."""
    with MemoryFile(SEEDS[0]) as memory, memory.open() as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    data = bytearray(SEEDS[0])
    data[offset + 2 : offset + 64] = b"\xff" * 62  # band 1's deflate stream, header kept
    code, err = _prepare(bytes(data))
    assert code == EXIT_USER_ERROR and "could not be decoded" in err
    assert "See previous exception" not in err


def test_tiff_declaring_65535_bands_found_by_fuzzing_is_refused_at_once():
    """Regression: an 8 x 8 TIFF whose SamplesPerPixel tag says 65535 was within the value
    budget (4.2 million values) and took 167 s in ``prepare``; the band count is bounded."""
    data = bytearray(SEEDS[2])
    samples_per_pixel = (277).to_bytes(2, "little")
    entry = next(e for e in _ifd_entries(SEEDS[2]) if data[e : e + 2] == samples_per_pixel)
    data[entry + 8 : entry + 10] = (65535).to_bytes(2, "little")
    code, err = _prepare(bytes(data))
    assert code == EXIT_USER_ERROR and "65,535 bands, more than the 512 allowed" in err


def test_undecodable_gdal_messages_print_no_traceback(monkeypatch):
    """Regression (fuzzing, rasterio #3128): a corrupt file can make GDAL's error message
    non-UTF-8; rasterio's Cython handler then printed the UnicodeDecodeError's traceback."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: reported.append(args.exc_value))
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: reported.append(value))
    quiet_undecodable_gdal_messages()  # as main() and the service install it
    quiet_undecodable_gdal_messages()  # once only
    decode = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    try:  # raised in a frame of rasterio's error module, as Cython reports it
        exec(compile("raise decode", "rasterio/_err.pyx", "exec"), {"decode": decode})
    except UnicodeDecodeError as raised:
        in_handler = raised
    other, elsewhere = ValueError("not ours"), UnicodeDecodeError("utf-8", b"", 0, 1, "x")
    for exc, where in ((decode, "rasterio._err.chaining_error_handler"), (other, "elsewhere")):
        args = SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                               err_msg=None, object=where)  # fmt: skip
        sys.unraisablehook(args)
    for exc in (in_handler, elsewhere):
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert reported == [other, elsewhere]


_PICKER: dict = {}


def _picker():
    """One ScenePicker for every example (building one per example loads the demo scene)."""
    from seamline.components.scene_picker import ScenePicker

    return _PICKER.setdefault("picker", ScenePicker())


@FUZZ
@given(data=broken_tiffs(), aoi=st.one_of(st.none(), aoi_documents()))
def test_malformed_dashboard_uploads_are_one_sentence_and_keep_the_scene(data, aoi):
    """The dashboard's upload (scene and AOI) under the service's fuzzing: a bad upload sets
    one sentence and the previous scene stays; a good one replaces it."""
    picker = _picker()
    before = picker.scene
    used = picker.use_upload(data, "scene.tif", aoi, "aoi.geojson" if aoi else None)
    if used:
        assert picker.message == "" and picker.scene.dims == ("band", "y", "x")
    else:
        assert picker.scene is before and "\n" not in picker.message
        assert picker.message.endswith(".") and "Traceback" not in picker.message


@FUZZ
@given(files=st.lists(broken_tiffs(), min_size=1, max_size=3))
def test_malformed_files_in_a_dashboard_folder_are_one_sentence(files):
    """The drift section's folder source with broken GeoTIFFs among its dates."""
    from seamline.components.drift_view import DriftSeries

    with tempfile.TemporaryDirectory() as tmp:
        for day, data in enumerate(files, start=1):
            (Path(tmp) / f"2024-01-{day:02d}.tif").write_bytes(data)
        state = DriftSeries(source="folder", folder=".", data_roots=[tmp], baseline_count=1,
                            tile_size=8)  # fmt: skip
        if not state.compute():
            assert "\n" not in state.message and state.message.endswith(".")
            assert state.results is None and not state.running
        else:
            assert len(state.results) == len(files)
