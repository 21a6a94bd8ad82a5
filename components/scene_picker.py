"""Where the scene comes from: the real Sentinel-2 demo, a synthetic scene, an upload, or a
COG URL on a host the operator allowed (``seamline serve --allow-remote-host``)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import geopandas as gpd
import panel as pn
import param
import xarray as xr

from seamline.core.data.grid import is_rotated
from seamline.core.data.io import open_aoi, read_geotiff_bytes
from seamline.core.data.limits import DEFAULT_BUDGET
from seamline.core.data.remote import source_path
from seamline.core.demo.data import sentinel2_aoi, sentinel2_sample
from seamline.core.demo.synthetic import make_scene
from seamline.core.errors import InputFileError, SeamlineError
from seamline.core.prepare.scene import clip_to_aoi, read_allowed_scene

SOURCES = ("Sentinel-2 demo", "Synthetic", "Upload")
URL_SOURCE = "URL"  # offered only where the operator allowed a host
WRAP_BUTTONS = ":host .bk-btn-group { flex-wrap: wrap; row-gap: 4px; }"
"""The source buttons wrap onto a second line in a narrow sidebar instead of being cut off."""
SYNTHETIC_SIZES = (256, 512, 1024, 2048, 4096)
GEOPACKAGE_SIGNATURE = b"SQLite format 3\x00"  # a GeoPackage is an SQLite file


def _from_bytes(data: bytes, filename: str, reader):
    """Read uploaded bytes with ``reader`` through a temporary file keeping the name's
    suffix (GDAL picks drivers by it), removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(filename).name
        path.write_bytes(data)
        return reader(path)


def _read_aoi(data: bytes, filename: str) -> gpd.GeoDataFrame:
    """The uploaded AOI, if it is GeoJSON or a GeoPackage by its content (whatever its name):
    an OGR VRT named ``aoi.geojson`` would make GDAL read another server file."""
    if not (data.lstrip()[:1] == b"{" or data.startswith(GEOPACKAGE_SIGNATURE)):
        raise InputFileError(
            f"The AOI upload {filename!r} is not GeoJSON or a GeoPackage: use one of those."
        )
    return _from_bytes(data, filename, open_aoi)


def _read_scene(data: bytes, filename: str) -> xr.DataArray:
    """The uploaded GeoTIFF, loaded once its size and header pass the shared input budget
    (read in memory by GDAL's GTiff driver only: a VRT could read server files or URLs)."""
    scene = read_geotiff_bytes(
        data, budget=DEFAULT_BUDGET, source=f"upload {filename!r}",
        fix="use `seamline predict` for it",
    )  # fmt: skip
    return _north_up(scene, f"upload {filename!r}", filename)


def _north_up(scene: xr.DataArray, what: str, filename: str) -> xr.DataArray:
    """``scene`` if its grid is north-up: the map draws north-up grids (image x/y axes)."""
    if is_rotated(scene.rio.transform()):
        crs = scene.rio.crs.to_string()
        raise InputFileError(
            f"The {what} has a rotated geotransform, which the map cannot draw: make it "
            f"north-up first (`seamline prepare {filename} north_up.tif --dst-crs {crs}`), or "
            "use `seamline predict` for it."
        )
    return scene


async def _off_the_loop(button: pn.widgets.Button, read, *args) -> None:
    """``read(*args)`` in a worker thread, ``button`` disabled meanwhile: the page stays
    responsive and the read is not started twice."""
    button.disabled = True
    try:
        await asyncio.to_thread(read, *args)
    finally:
        button.disabled = False


class ScenePicker(pn.viewable.Viewer):
    """Picks the scene (and optional AOI) the rest of the dashboard works on.

    ``scene``, ``aoi`` and ``title`` are the outputs; ``message`` holds the one sentence
    shown when an upload cannot be used (the previous scene stays).
    """

    source = param.Selector(objects=list(SOURCES), default=SOURCES[0], label="Scene")
    synthetic_size = param.Selector(
        objects=list(SYNTHETIC_SIZES), default=1024, label="Synthetic size (px)"
    )
    seed = param.Integer(default=0, bounds=(0, 9999), label="Synthetic seed")
    scene = param.ClassSelector(class_=xr.DataArray, doc="The (band, y, x) scene.")
    aoi = param.ClassSelector(class_=gpd.GeoDataFrame, allow_None=True, doc="Optional AOI.")
    title = param.String(default="")
    message = param.String(default="", doc="Why the last upload was refused, if it was.")
    remote_hosts = param.List(default=[], item_type=str, constant=True,
                              doc="Hosts whose COG URLs a visitor may open (none: no URL "
                              "source).")  # fmt: skip

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.remote_hosts:
            self.param.source.objects = [*SOURCES, URL_SOURCE]
        self._url_input = pn.widgets.TextInput(
            name="COG URL", placeholder=f"https://{(self.remote_hosts or ['host'])[0]}/scene.tif"
        )
        self._open_button = pn.widgets.Button(name="Open URL", button_type="primary")
        self._open_button.on_click(self._open_url)
        # A file arrives as one websocket message: `seamline serve` sizes the server's limit
        # for the upload budget (app/cli.py), so a file over it gets one sentence, not a
        # closed session. (Panel's chunked FileDropper renders nothing here without its CDN.)
        self._raster_input = pn.widgets.FileInput(accept=".tif,.tiff", name="GeoTIFF")
        self._aoi_input = pn.widgets.FileInput(accept=".geojson,.json,.gpkg", name="AOI")
        self._load_button = pn.widgets.Button(name="Use upload", button_type="primary")
        self._load_button.on_click(self._use_dropped)
        self.param.update(**self._builtin())

    async def _use_dropped(self, _event=None) -> None:
        """The dropped files, decoded off the event loop."""
        raster, aoi = self._raster_input, self._aoi_input
        await _off_the_loop(self._load_button, self.use_upload, raster.value, raster.filename,
                            aoi.value, aoi.filename)  # fmt: skip

    async def _open_url(self, _event=None) -> None:
        """The URL typed, read off the event loop (range requests take a while)."""
        aoi = self._aoi_input
        await _off_the_loop(self._open_button, self.use_url, self._url_input.value, aoi.value,
                            aoi.filename)  # fmt: skip

    def _builtin(self) -> dict:
        """The demo or synthetic scene picked, as param values (none for an upload)."""
        if self.source == "Sentinel-2 demo":
            return {"scene": sentinel2_sample(), "aoi": sentinel2_aoi(),
                    "title": "Sentinel-2 demo scene (EPSG:32719)"}  # fmt: skip
        if self.source == "Synthetic":
            size = self.synthetic_size
            return {"scene": make_scene(size, size, seed=self.seed)[0], "aoi": None,
                    "title": f"Synthetic scene {size} x {size} (seed {self.seed})"}  # fmt: skip
        return {}

    @param.depends("source", "synthetic_size", "seed", watch=True)
    async def _load_builtin(self) -> None:
        """Load the demo or synthetic scene when those are picked (uploads wait for a click),
        in a worker thread: a 4096^2 synthetic scene takes ~3 s, which would stall every
        session of the server on its event loop."""
        self.message = ""
        self.param.update(**await asyncio.to_thread(self._builtin))

    def use_upload(
        self,
        raster: bytes | None,
        raster_name: str | None,
        aoi: bytes | None = None,
        aoi_name: str | None = None,
    ) -> bool:
        """Use an uploaded GeoTIFF, clipped to the uploaded AOI when there is one (pixels
        outside it are nodata, so nothing is predicted there); on a bad file set ``message``
        instead."""
        if not raster:
            self.message = "Choose a GeoTIFF to upload first."
            return False
        try:
            scene = _read_scene(raster, raster_name or "upload.tif")
            area = _read_aoi(aoi, aoi_name or "aoi.geojson") if aoi else None
            if area is not None:
                scene = clip_to_aoi(scene, area)
        except SeamlineError as exc:
            self.message = str(exc)
            return False
        self.param.update(
            scene=scene, aoi=area, message="", source="Upload", title=f"Upload: {raster_name}"
        )
        return True

    def use_url(self, url: str, aoi: bytes | None = None, aoi_name: str | None = None) -> bool:
        """Use the COG at ``url`` (on an allowed host), only the uploaded AOI's window of it
        when there is one (pixels outside the AOI nodata); on a bad URL or file set
        ``message`` instead."""
        if not url.strip():
            self.message = "Type the URL of a Cloud-Optimized GeoTIFF first."
            return False
        try:
            area = _read_aoi(aoi, aoi_name or "aoi.geojson") if aoi else None
            scene = read_allowed_scene(url, self.remote_hosts, budget=DEFAULT_BUDGET, aoi=area)
            name = source_path(url.strip()).name
            scene = _north_up(scene, f"GeoTIFF at {url.strip()!r}", name)
        except SeamlineError as exc:
            self.message = str(exc)
            return False
        self.param.update(scene=scene, aoi=area, message="", source=URL_SOURCE,
                          title=f"URL: {name}")  # fmt: skip
        return True

    def __panel__(self) -> pn.viewable.Viewable:
        """Source choice, synthetic options or upload widgets, and the refusal message."""

        @pn.depends(self.param.source, self.param.message)
        def options(source: str, message: str) -> pn.viewable.Viewable:
            parts: list = []
            if source == "Synthetic":
                parts += [self.param.synthetic_size, self.param.seed]
            elif source == "Upload":
                parts += [self._raster_input, self._aoi_input, self._load_button]
            elif source == URL_SOURCE:
                hosts = ", ".join(self.remote_hosts)
                parts += [self._url_input, pn.pane.Markdown(f"<small>Hosts allowed: {hosts}; "
                                                            "an AOI reads its window only."
                                                            "</small>"),
                          self._aoi_input, self._open_button]  # fmt: skip
            if message:
                parts.append(pn.pane.Alert(message, alert_type="danger"))
            return pn.Column(*parts, sizing_mode="stretch_width")

        return pn.Column(
            pn.widgets.RadioButtonGroup.from_param(
                self.param.source, button_type="primary", stylesheets=[WRAP_BUTTONS]
            ),
            options,
            sizing_mode="stretch_width",
        )
