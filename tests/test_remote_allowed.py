"""COG URLs from dashboard visitors and service clients (issue #21): refused unless the
operator allowed the host (``--allow-remote-host``); then read as a GeoTIFF only, without
redirects, within the input budget, an AOI's window only. A local server (tests/rangeserver.py,
127.0.0.1) honours Range, counts bytes and redirects where told."""

from __future__ import annotations

import json

import geopandas as gpd
import httpx
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from seamline.app.cli import build_parser, main, serve_command
from seamline.app.layout import create_sections
from seamline.app.service import create_app
from seamline.components.scene_picker import URL_SOURCE, ScenePicker
from seamline.core.data.io import geotiff_bytes, open_raster, write_raster
from seamline.core.data.limits import DEFAULT_BUDGET, InputBudget
from seamline.core.data.remote import REMOTE_HOSTS_ENV, allowed_hosts, check_allowed
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import (
    HostNotAllowedError,
    InputFileError,
    InvalidArgumentError,
    MissingCRSError,
    SizeLimitError,
)
from seamline.core.models.modelio import load_model
from seamline.core.prepare.scene import clip_to_aoi, read_allowed_scene
from tests.rangeserver import serving
from tests.test_cli import assert_one_sentence_error
from tests.test_remote import write_cog
from tests.test_service import serving as serving_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("allowed")
    cogs = {"scene": write_cog(folder, "scene", 300, 5), "big": write_cog(folder, "big", 2048, 6)}
    scene, _ = make_scene(64, 64, seed=2)
    with rasterio.open(folder / "nocrs.tif", "w", driver="GTiff", width=64, height=64, count=1,
                       dtype="uint16") as dst:  # fmt: skip
        dst.write(scene.values[:1])
    # A VRT named .tif whose source is a file of the server's own disk: GDAL would read it.
    secret = write_raster(scene, tmp_path_factory.mktemp("private") / "secret.tif")
    (folder / "vrt.tif").write_text(
        f'<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="UInt16" '
        f'band="1"><SimpleSource><SourceFilename>{secret}</SourceFilename><SourceBand>1'
        f"</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    with serving(folder) as server:
        server.redirects["/moved.tif"] = server.url("scene.tif")
        yield server, cogs


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["Data.Example.org", "data.example.org"], ("data.example.org",)),
        (["tiles.example.org:8443", " a.b "], ("tiles.example.org:8443", "a.b")),
    ],
)
def test_allowed_hosts_are_normalised(entries, expected):
    assert allowed_hosts(entries) == expected


@pytest.mark.parametrize("entry", ["*.example.org", "https://a.org/", "a.org/x", "user@a.org",
                                   "a.org:http", ""])  # fmt: skip
def test_an_entry_that_is_not_a_host_is_one_sentence(entry):
    with pytest.raises(InvalidArgumentError, match="--allow-remote-host"):
        allowed_hosts([entry])


@pytest.mark.parametrize(
    ("url", "hosts", "error"),
    [
        ("https://a.org/s.tif", [], HostNotAllowedError),
        ("https://b.org/s.tif", ["a.org"], HostNotAllowedError),
        ("https://a.org.evil.net/s.tif", ["a.org"], HostNotAllowedError),
        ("https://a.org:8443/s.tif", ["a.org"], HostNotAllowedError),  # not the default port
        ("http://a.org:8443/s.tif", ["a.org:9000"], HostNotAllowedError),
        ("ftp://a.org/s.tif", ["a.org"], InputFileError),
        ("file:///etc/passwd", ["a.org"], InputFileError),
        ("/vsicurl/https://a.org/s.tif", ["a.org"], InputFileError),
        ("https://a.org/", ["a.org"], InputFileError),
        ("https://u:p@a.org/s.tif", ["a.org"], InputFileError),
        ("https://a.org:99999/s.tif", ["a.org"], InputFileError),
    ],
)
def test_urls_off_the_allow_list_are_refused(url, hosts, error):
    with pytest.raises(error) as refused:
        check_allowed(url, hosts)
    assert "\n" not in str(refused.value) and str(refused.value).endswith(".")


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("https://A.org/s.tif", ["a.org"]),
        ("https://a.org:443/s.tif?sig=1", ["a.org"]),
        ("http://a.org:8443/s.tif", ["a.org:8443"]),
    ],
)
def test_urls_on_the_allow_list_pass(url, hosts):
    assert check_allowed(url, hosts) == url


def test_an_allowed_url_reads_as_the_local_file(served):
    server, cogs = served
    got = read_allowed_scene(server.url("scene.tif"), [server.host], budget=DEFAULT_BUDGET)
    local = open_raster(cogs["scene"]).load()
    np.testing.assert_array_equal(got.values, local.values)
    assert got.rio.transform() == local.rio.transform() and got.rio.crs == local.rio.crs
    assert list(got.band.values) == list(local.band.values)


def test_an_aoi_reads_its_window_only(served):
    server, cogs = served
    local = open_raster(cogs["big"])
    x0, y0 = local.rio.transform() * (900, 1100)
    x1, y1 = local.rio.transform() * (1100, 900)
    aoi = gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs=local.rio.crs).to_crs(4326)
    before = server.bytes_sent
    got = read_allowed_scene(server.url("big.tif"), [server.host], budget=DEFAULT_BUDGET, aoi=aoi)
    fetched = server.bytes_sent - before
    np.testing.assert_array_equal(got.values, clip_to_aoi(local, aoi).values)
    assert fetched < 0.1 * cogs["big"].stat().st_size, fetched


def test_the_budget_refuses_from_the_header(served):
    server, cogs = served
    before = server.bytes_sent
    with pytest.raises(SizeLimitError, match="give an AOI"):
        read_allowed_scene(server.url("big.tif"), [server.host],
                           budget=InputBudget(max_pixels=512 * 512 * 6))  # fmt: skip
    assert server.bytes_sent - before < 0.01 * cogs["big"].stat().st_size  # the header only


@pytest.mark.parametrize(
    ("name", "error", "phrase"),
    [
        ("moved.tif", HostNotAllowedError, "redirects elsewhere (302)"),
        ("missing.tif", InputFileError, "answered 404"),
        ("vrt.tif", InputFileError, "is not a GeoTIFF"),
        ("nocrs.tif", MissingCRSError, "has no CRS"),
    ],
)
def test_redirects_other_formats_and_bad_files_are_one_sentence(served, name, error, phrase):
    server, _ = served
    with pytest.raises(error, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        read_allowed_scene(server.url(name), [server.host], budget=DEFAULT_BUDGET)


def test_an_unreachable_host_is_one_sentence():
    with pytest.raises(InputFileError, match="could not be reached"):
        read_allowed_scene("http://127.0.0.1:9/scene.tif", ["127.0.0.1:9"],
                           budget=DEFAULT_BUDGET)  # fmt: skip


def test_the_picker_offers_urls_only_where_hosts_are_allowed(served):
    server, cogs = served
    assert URL_SOURCE not in ScenePicker().param.source.objects
    assert URL_SOURCE not in create_sections(remote_hosts=()).picker.param.source.objects
    picker = create_sections(remote_hosts=[server.host]).picker
    assert URL_SOURCE in picker.param.source.objects
    before = picker.scene
    assert not picker.use_url(server.url("moved.tif"))
    assert "redirects elsewhere" in picker.message and picker.scene is before
    assert not picker.use_url("https://elsewhere.org/scene.tif")
    assert "not one this dashboard may read" in picker.message
    assert picker.use_url(server.url("scene.tif"))
    assert picker.message == "" and picker.source == URL_SOURCE
    assert picker.title == "URL: scene.tif" and picker.scene.shape == (6, 300, 300)


def test_the_picker_reads_the_window_of_an_uploaded_aoi(served):
    server, cogs = served
    local = open_raster(cogs["big"])
    x0, y0 = local.rio.transform() * (100, 300)
    x1, y1 = local.rio.transform() * (300, 100)
    aoi = gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs=local.rio.crs)
    picker = ScenePicker(remote_hosts=[server.host])
    assert picker.use_url(server.url("big.tif"), aoi.to_json().encode(), "site.geojson")
    assert picker.scene.shape == (6, 200, 200) and picker.aoi is not None


def test_the_service_predicts_a_url_as_the_same_bytes(served):
    server, cogs = served
    demo = load_model("demo")
    options = {"precision": "fp32", "tile_size": 128, "overlap": 32}
    body = geotiff_bytes(open_raster(cogs["scene"]).load())
    with serving_app(create_app(demo, remote_hosts=(server.host,), **options)) as base, \
            httpx.Client(base_url=base, timeout=120) as http:  # fmt: skip
        assert http.get("/health").json()["remote_urls"] is True
        posted = http.post("/predict", content=body, headers={"Content-Type": "image/tiff"})
        by_url = http.post("/predict", json={"url": server.url("scene.tif")})
        assert posted.status_code == by_url.status_code == 200
        with rasterio.MemoryFile(posted.content) as a, rasterio.MemoryFile(by_url.content) as b:
            with a.open() as x, b.open() as y:
                np.testing.assert_array_equal(x.read(), y.read())
                assert x.transform == y.transform
        for payload, status, phrase in [
            ({"url": "https://elsewhere.org/scene.tif"}, 403, "not one this service may read"),
            ({"url": server.url("moved.tif")}, 403, "redirects elsewhere"),
            ({"href": "x"}, 422, '{"url":'),
            ({"url": server.url("vrt.tif")}, 422, "is not a GeoTIFF"),
        ]:
            answer = http.post("/predict", json=payload)
            assert answer.status_code == status and phrase in answer.json()["error"], answer.text
        huge = http.post("/predict", content=b"{" + b" " * 10_000 + b"}",
                         headers={"Content-Type": "application/json"})  # fmt: skip
        assert huge.status_code == 413
        error = huge.json()["error"]  # names the JSON body, not an upload of a scene
        assert error.startswith("The JSON request body is larger") and '{"url":' in error
    with serving_app(create_app(demo, **options)) as base, httpx.Client(base_url=base) as http:
        assert http.get("/health").json()["remote_urls"] is False
        answer = http.post("/predict", json={"url": server.url("scene.tif")})
        assert answer.status_code == 403 and "reads no URLs" in answer.json()["error"]


def test_serve_passes_the_allowed_hosts_to_the_dashboard():
    args = build_parser().parse_args(["serve", "--allow-remote-host", "Data.Example.org",
                                      "--allow-remote-host", "tiles.example.org:8443"])  # fmt: skip
    _, env = serve_command(args)
    assert env[REMOTE_HOSTS_ENV] == "data.example.org,tiles.example.org:8443"
    assert serve_command(build_parser().parse_args(["serve"]))[1][REMOTE_HOSTS_ENV] == ""


@pytest.mark.parametrize("command", ["serve", "serve-api"])
def test_a_bad_allowed_host_is_one_sentence(command, capsys):
    code = main([command, "--allow-remote-host", "https://data.example.org/"])
    assert_one_sentence_error(code, capsys.readouterr().err, "--allow-remote-host")


def test_a_json_body_that_is_not_json_is_one_sentence(served):
    server, _ = served
    demo = load_model("demo")
    app = create_app(demo, precision="fp32", tile_size=128, overlap=32,
                     remote_hosts=(server.host,))  # fmt: skip
    with serving_app(app) as base, httpx.Client(base_url=base) as http:
        answer = http.post("/predict", content=b"not json",
                           headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 422 and json.loads(answer.text)["error"].endswith(".")
