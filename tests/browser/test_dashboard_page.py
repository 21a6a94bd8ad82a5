"""The served dashboard, as a user sees it: headless Chromium against `seamline serve`."""

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.browser.chromium import BROWSER, CHROMIUM, FLAGS, LOOPBACK, free_port

pytestmark = BROWSER


@contextmanager
def serving(*options: str) -> Iterator[str]:
    """`seamline serve OPTIONS` on 127.0.0.1, its page's URL; killed at the end (and by its
    own timeout at worst)."""
    port = free_port()
    exe = str(Path(sys.executable).with_name("seamline"))
    proc = subprocess.Popen(
        ["timeout", "300", exe, "serve", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/dashboard"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"dashboard did not start: {proc.stdout.read()}")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served():
    """The dashboard as `seamline serve` starts it by default."""
    with serving() as url:
        yield url


@dataclass
class Visit:
    """A page in headless Chromium with what it logged; ``shot`` saves a screenshot."""

    page: object
    errors: list = field(default_factory=list)
    external: list = field(default_factory=list)
    folder: Path = Path(".")

    def shot(self, name: str) -> Path:
        """Screenshot the whole page as ``name`` (kept as an artifact with
        ``SEAMLINE_SCREENSHOTS=DIR``)."""
        path = self.folder / name
        self.page.screenshot(path=str(path), full_page=True)
        if os.environ.get("SEAMLINE_SCREENSHOTS"):
            keep = Path(os.environ["SEAMLINE_SCREENSHOTS"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / name)
        return path


@contextmanager
def opened(url: str, viewport: tuple[int, int]) -> Iterator[tuple[object, list[str]]]:
    """``url`` in headless Chromium at ``viewport`` (width, height) once its first figure is
    drawn, and the list the page's errors go to."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport=dict(zip(("width", "height"), viewport, strict=True)))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.locator(".bk-Figure").first.wait_for(timeout=90_000)
        try:
            yield page, errors
        finally:
            browser.close()


@pytest.fixture
def visit(served, tmp_path):
    """The served dashboard opened at 1366 x 768, console errors and outside requests logged."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        seen = Visit(page, folder=tmp_path)
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        outside = seen.external.append
        page.on("request", lambda r: None if r.url.startswith(LOOPBACK) else outside(r.url))
        page.goto(served)
        yield seen
        browser.close()


def test_page_renders_air_gapped_without_errors(visit):
    page = visit.page
    page.get_by_text("EPSG:32719").first.wait_for(timeout=90_000)
    page.locator("canvas").first.wait_for(timeout=90_000)
    page.wait_for_timeout(1500)
    shot = visit.shot("dashboard.png")
    assert visit.errors == []
    assert visit.external == [], f"the page asked the internet for {visit.external}"
    assert page.title() == "Seamline"
    # the scene's bands (metadata) and the model's (its card: "6: blue, ...")
    assert page.get_by_text("blue, green, red, nir, swir1, swir2").count() == 2
    assert page.get_by_text("6: blue, green, red, nir, swir1, swir2").count() == 1
    assert shot.stat().st_size > 20_000


def test_the_default_run_is_auto_and_says_what_it_picked(visit):
    """Precision auto is the page's default (#20): the server measured it at start, so the
    first Run predicts at once with the backend auto picked, says which and why, and shows
    the agreement auto measured (no FP32 reference run of the scene)."""
    page = visit.page
    page.locator(".bk-tab", has_text="Predict & optimise").click()
    page.get_by_role("button", name="Run inference").click()
    reason = page.get_by_text(re.compile(r"Precision auto picked \w+"))
    reason.wait_for(timeout=60_000)
    assert "fastest per tile" in reason.inner_text()
    assert page.get_by_text("on calibration tiles").first.is_visible()
    assert page.get_by_text("FP32 reference").count() == 0 and visit.errors == []
    page.get_by_text("What auto measured on this machine").click()  # the table it picked from
    header = page.get_by_role("columnheader", name="% of peak")
    header.wait_for(timeout=10_000)
    assert page.get_by_role("cell", name="fp32", exact=True).is_visible()
    visit.shot("auto.png")


def test_run_inference_from_the_page_updates_map_and_figures(visit):
    import geopandas as gpd

    page = visit.page
    page.locator(".bk-tab", has_text="Predict & optimise").click()
    page.get_by_text("Press Run inference").wait_for(timeout=30_000)  # no map yet
    page.locator("select").nth(0).select_option("128")  # tile size
    page.get_by_role("button", name="int8").click()
    page.get_by_role("button", name="Run inference").click()
    agreement = page.get_by_text(re.compile(r"^\d+\.\d\d %$")).first  # int8 vs fp32
    agreement.wait_for(timeout=120_000)
    model_mb = page.get_by_text(re.compile(r"^0\.\d\d MB$")).first.inner_text()
    assert page.get_by_text("Press Run inference").is_hidden()  # the class map replaced it
    assert page.get_by_text("Predicted classes").first.is_visible()
    before = _pixels(_map(page))
    checkboxes = page.locator("input[type=checkbox]")  # "Tile grid", "Class polygons"
    checkboxes.nth(1).check()  # polygonized in a worker thread, then drawn
    page.wait_for_timeout(2500)
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Download polygons (GeoPackage)").click()
    polygons = gpd.read_file(download.value.path())
    page.wait_for_timeout(1500)
    visit.shot("inference.png")
    assert visit.errors == []
    assert len(polygons) > 0 and polygons.crs.to_epsg() == 32719
    after = _pixels(_map(page))
    assert after.shape == before.shape and (after != before).any(-1).mean() > 0.005  # outlines
    assert float(agreement.inner_text().split()[0]) >= 98.0
    assert float(model_mb.split()[0]) < 0.2  # the INT8 model, not FP32's 0.48 MB


def test_drift_slider_changes_the_shown_date(visit):
    page = visit.page
    date = re.compile(r"\d{4}-\d{2}-\d{2}.* · events: ")
    page.locator(".bk-tab", has_text="Monitor drift").click()
    page.get_by_role("button", name="Run monitoring").click()
    shown = page.get_by_text(date).first
    shown.wait_for(timeout=120_000)
    before = shown.inner_text()
    handle = page.locator(".noUi-handle").last  # the date slider
    deadline = time.time() + 30
    while page.get_by_text(date).first.inner_text() == before and time.time() < deadline:
        handle.focus()  # step it with the keyboard, as a user can; again if the slider had
        handle.press("ArrowRight")  # not yet taken the series' dates (seen once under load)
        page.wait_for_timeout(1000)
    after = page.get_by_text(date).first.inner_text()
    page.wait_for_timeout(1500)
    visit.shot("drift.png")
    assert visit.errors == []
    assert before != after and before[:10] < after[:10]  # a later date is shown


def test_the_drift_section_fits_a_small_window(served, tmp_path):
    """At 900 x 700 the drift section goes below its controls and its maps one above the
    other: squeezed beside the controls its text was one letter wide and its maps cut off."""
    with opened(served, (900, 700)) as (page, errors):
        page.locator(".bk-tab", has_text="Monitor drift").click()
        page.get_by_role("button", name="Run monitoring").click()
        page.get_by_text(re.compile(r"\d{4}-\d{2}-\d{2}.* · events: ")).first.wait_for(
            timeout=120_000
        )
        figures, boxes, deadline = page.locator(".bk-Figure"), [], time.time() + 60
        while len(boxes) < 4 and time.time() < deadline:  # score, scene, drift, class shares
            page.wait_for_timeout(1000)
            boxes = [b for b in (figures.nth(i).bounding_box() for i in range(figures.count()))
                     if b and b["width"] > 0]  # fmt: skip
        page.screenshot(path=str(tmp_path / "drift_900.png"), full_page=True)
        assert len(boxes) >= 4
        assert all(b["x"] + b["width"] <= 900 for b in boxes), boxes
        heading = page.get_by_text("Drift monitoring", exact=True).bounding_box()
        assert heading["width"] > 100  # a heading on one line, not a letter a line
        assert errors == []


def _pixels(locator):
    """A figure's screenshot as an (h, w, 3) int array."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"), dtype=int)


def _painted(locator) -> float:
    """Share of a figure's screenshot that is not page-white: ~0 for a blank map."""
    return float((abs(_pixels(locator) - 255).sum(axis=-1) > 30).mean())


def _map(page):
    """The largest figure on screen: the map of the section shown."""
    figures = page.locator(".bk-Figure")
    boxes = [(i, figures.nth(i).bounding_box()) for i in range(figures.count())]
    shown = [(b["width"] * b["height"], i) for i, b in boxes if b and b["width"] > 0]
    return figures.nth(max(shown)[1])


@pytest.mark.parametrize("viewport", [(900, 700), (1280, 800), (1920, 1080)])
def test_every_scene_source_draws_its_maps(served, tmp_path, viewport):
    """Off the default view: a synthetic scene and an upload in another CRS each get a map
    framed to them (the blank-map defect kept the demo's axes), and so does the class map,
    each inside the window (a fixed 580 px frame was cut off in a 900 px one)."""
    from seamline.core.data.io import write_raster
    from seamline.core.demo.synthetic import make_scene

    upload = write_raster(
        make_scene(300, 200, crs="EPSG:4326", origin=(12.0, 46.0), resolution=0.0001, seed=2)[0],
        tmp_path / "field.tif",
    )
    with opened(served, viewport) as (page, errors):
        page.get_by_role("button", name="Synthetic").click()
        page.get_by_text("1024 x 1024 px").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        box = _map(page).bounding_box()
        assert _painted(_map(page)) > 0.5  # the scene, not an empty frame
        assert box["x"] + box["width"] <= viewport[0]  # not cut off at the right

        page.locator(".bk-tab", has_text="Predict & optimise").click()
        page.get_by_role("button", name="Run inference").click()
        page.get_by_text("Predicted classes").first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        assert _painted(_map(page)) > 0.5
        box = _map(page).bounding_box()
        assert box["x"] + box["width"] <= viewport[0]

        page.get_by_role("button", name="Upload").click()
        page.locator("input[type=file]").first.set_input_files(str(upload))
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Use upload").click()
        page.locator(".bk-tab", has_text="Scene").click()
        page.get_by_text("200 x 300 px").first.wait_for(timeout=60_000)
        assert page.get_by_text("EPSG:4326").count() >= 1
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / f"upload_{viewport[0]}.png"), full_page=True)
        assert _painted(_map(page)) > 0.5
        assert errors == []


def test_a_model_that_is_not_ours_from_the_command_line(tmp_path):
    """`seamline serve --model` with another architecture (a torch.export archive): the page
    names it, predicts with it and draws its classes."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import foreign_model

    model = foreign_model(tmp_path)
    with serving("--model", str(model), "--model", "demo") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.get_by_text("3: water, field, town").wait_for(timeout=90_000)  # the model card
        assert page.get_by_text("± 3 px").count() == 1
        page.locator(".bk-tab", has_text="Predict & optimise").click()
        page.get_by_role("button", name="Run inference").click()
        page.get_by_text("Predicted classes").first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / "foreign_model.png"), full_page=True)
        assert page.get_by_text("town", exact=True).count() >= 1  # its legend, not the demo's
        assert page.get_by_text("vegetation", exact=True).count() == 0
        assert _painted(_map(page)) > 0.5
        assert errors == []
        browser.close()


def test_run_is_locked_while_in_flight_and_cancel_stops_it(visit):
    """Run is disabled while a run is in flight (a double click starts one); Cancel stops a
    long run between batches and leaves every control usable."""
    page = visit.page
    page.get_by_role("button", name="Synthetic").click()
    page.locator("select").first.select_option("2048")
    page.get_by_text("2048 x 2048 px").first.wait_for(timeout=90_000)
    page.locator(".bk-tab", has_text="Predict & optimise").click()
    page.locator("select").nth(1).select_option("128")  # ~600 tiles: a run of many seconds
    run = page.get_by_role("button", name="Run inference")
    run.dblclick()
    cancel = page.get_by_role("button", name="Cancel")
    cancel.wait_for(timeout=30_000)
    assert run.is_disabled()
    # the phase is named: auto at 128 px tiles was not measured at server start
    page.get_by_text(re.compile("^(AUTO 1/1|Auto: measuring)")).wait_for(timeout=30_000)
    cancel.click()
    page.get_by_text("Run cancelled").wait_for(timeout=60_000)  # after a measurement
    assert run.is_enabled() and cancel.is_hidden()
    assert page.get_by_text("Predicted classes").count() == 0  # nothing half-done is shown
    visit.shot("cancelled.png")
    assert visit.errors == []


def test_a_large_upload_arrives_and_a_wrong_file_is_one_sentence(visit, tmp_path):
    """A 33 MB GeoTIFF (over Bokeh's 20 MiB message limit, under the 64 MiB budget) is used;
    a file that is not a GeoTIFF gets one sentence and the session goes on."""
    import numpy as np

    from tests.conftest import write_tif

    rng = np.random.default_rng(0)  # noise: GDAL cannot shrink it below the message limit
    big = write_tif(tmp_path / "big.tif", rng.integers(1, 9000, (6, 1700, 1700), dtype=np.uint16))
    assert big.stat().st_size > 30 * 2**20
    junk = tmp_path / "notes.tif"
    junk.write_text("not a raster")
    page = visit.page
    page.get_by_role("button", name="Upload").click()
    upload = page.locator("input[type=file]").first
    upload.set_input_files(str(junk))
    page.get_by_role("button", name="Use upload").click()
    alert = page.locator(".alert-danger", has_text="notes.tif").first
    alert.wait_for(timeout=30_000)
    assert "Traceback" not in alert.inner_text() and "\n" not in alert.inner_text().strip()
    assert "/tmp" not in alert.inner_text()  # no server path reaches the visitor
    upload.set_input_files(str(big))
    page.wait_for_timeout(3000)
    page.get_by_role("button", name="Use upload").click()
    page.get_by_text("1700 x 1700 px").first.wait_for(timeout=90_000)
    assert visit.errors == []


def test_a_url_on_an_allowed_host_is_a_scene_source(tmp_path):
    """`seamline serve --allow-remote-host`: the URL source opens a COG served over HTTP
    (its map drawn, at a small viewport), and a URL that redirects is one sentence that
    leaves the scene in place."""
    from seamline.core.data.io import write_raster
    from seamline.core.demo.synthetic import make_scene
    from tests.rangeserver import serving as serving_files

    scene = make_scene(240, 320, crs="EPSG:32633", origin=(465000.0, 5080000.0), seed=3)[0]
    write_raster(scene, tmp_path / "site.tif", driver="COG")
    with serving_files(tmp_path) as files, serving("--allow-remote-host", files.host) as url, \
            opened(url, (900, 700)) as (page, errors):  # fmt: skip
        files.redirects["/moved.tif"] = files.url("site.tif")
        page.get_by_role("button", name="URL", exact=True).click()
        page.get_by_text(f"Hosts allowed: {files.host}").wait_for(timeout=30_000)
        field = page.get_by_placeholder(f"https://{files.host}/scene.tif")
        field.fill(files.url("site.tif"))
        field.press("Enter")
        page.get_by_role("button", name="Open URL").click()
        page.get_by_text("320 x 240 px").first.wait_for(timeout=60_000)
        assert page.get_by_text("EPSG:32633").count() >= 1
        page.wait_for_timeout(1500)
        assert _painted(_map(page)) > 0.5
        field.fill(files.url("moved.tif"))
        field.press("Enter")
        page.get_by_role("button", name="Open URL").click()
        page.get_by_text("redirects elsewhere (302)").wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "url_source.png"), full_page=True)
        assert page.get_by_text("320 x 240 px").count() >= 1  # the scene stays
        assert errors == []
