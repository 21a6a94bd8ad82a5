"""A scene overview: RGB composite in the scene's own CRS, AOI outline and metadata."""

from __future__ import annotations

import geopandas as gpd
import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr
from holoviews.operation.datashader import regrid

from seamline.components.fit_width import map_width_probe
from seamline.components.map_axes import map_axes, map_frame
from seamline.core.data.io import band_names, valid_mask
from seamline.core.prepare.scene import align_aoi

RGB_CANDIDATES = (("red", "green", "blue"), ("band_1", "band_2", "band_3"))


def rgb_composite(scene: xr.DataArray, bands: tuple[str, str, str]) -> np.ndarray:
    """A display-only ``(y, x, 4)`` uint8 RGBA composite, 2-98 % stretched, nodata transparent.

    The stretch is for the eye only; the model always sees baseline-normalised values.
    """
    names = band_names(scene)
    valid = valid_mask(scene)
    rgba = np.zeros((*valid.shape, 4), dtype=np.uint8)
    for i, name in enumerate(bands):
        band = np.asarray(scene.values[names.index(name)], dtype=np.float32)
        lo, hi = np.percentile(band[valid], [2, 98]) if valid.any() else (0.0, 1.0)
        scaled = np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1)
        rgba[..., i] = (scaled * 255).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba


def default_rgb_bands(scene: xr.DataArray) -> tuple[str, ...]:
    """Red, green, blue by name when the scene has them, else its first three bands."""
    names = band_names(scene)
    for candidate in RGB_CANDIDATES:
        if set(candidate) <= set(names):
            return candidate
    return tuple(names[:3]) if len(names) >= 3 else (names[0],) * 3


class SceneView(pn.viewable.Viewer):
    """RGB composite (datashader-regridded, no basemap), AOI outline and scene metadata."""

    scene = param.ClassSelector(class_=xr.DataArray, doc="A (band, y, x) scene with a CRS.")
    aoi = param.ClassSelector(class_=gpd.GeoDataFrame, allow_None=True, doc="Optional AOI.")
    title = param.String(default="Scene")
    map_width = param.Integer(default=580, doc="The widest map frame (the column's width).")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._width = map_width_probe(self)

    @param.depends("scene")
    def metadata(self) -> dict[str, str]:
        """CRS, resolution, size and bands, as shown beside the map."""
        scene = self.scene
        resx, resy = scene.rio.resolution()
        return {
            "CRS": scene.rio.crs.to_string() if scene.rio.crs else "none",
            "Resolution": f"{abs(resx):g} x {abs(resy):g}",
            "Size": f"{scene.sizes['x']} x {scene.sizes['y']} px",
            "Bands": ", ".join(band_names(scene)),
            "Nodata": str(scene.rio.nodata),
        }

    @param.depends("scene")
    def image(self) -> hv.RGB:
        """The full-resolution RGB composite in the scene's CRS coordinates."""
        scene = self.scene
        rgba = rgb_composite(scene, default_rgb_bands(scene))
        if scene.rio.transform().e > 0:  # south-up raster: HoloViews wants row 0 at the top
            rgba = rgba[::-1]
        return hv.RGB(rgba, bounds=scene.rio.bounds(), vdims=list("RGBA")).opts(
            **map_axes(scene.rio.crs)
        )

    @param.depends("scene", "aoi")
    def outline(self) -> hv.Path:
        """The AOI's outer rings, reprojected to the scene's CRS (empty without an AOI)."""
        if self.aoi is None:
            return hv.Path([])
        aoi = align_aoi(self.aoi, self.scene.rio.crs)
        rings = [
            np.asarray(poly.exterior.coords)
            for geom in aoi.geometry
            for poly in getattr(geom, "geoms", [geom])
        ]
        return hv.Path(rings)

    def plot(self) -> hv.Overlay:
        """Datashader-regridded composite (re-rendered on zoom) under the AOI outline, framed
        to the current scene at 1:1."""
        composite = regrid(hv.DynamicMap(self.image)).opts(
            title=self.title, **map_frame(self.scene, max_width=self.map_width)
        )
        return composite * hv.DynamicMap(self.outline).opts(color="#ffcc00", line_width=2)

    @param.depends("scene", "title", "map_width")
    def _map(self) -> pn.pane.HoloViews:
        # A new scene gets a new figure: regrid's zoom range, the axes and the title of the
        # previous scene would otherwise frame the new one (a blank map, DataError in the log).
        # Unlinked: Panel links the x/y ranges of every HoloViews pane of a page, and the
        # class map may still show another scene.
        return pn.pane.HoloViews(self.plot(), linked_axes=False)

    @param.depends("scene")
    def _metadata_pane(self) -> pn.pane.Markdown:
        return pn.pane.Markdown(
            "\n".join(f"- **{k}**: {v}" for k, v in self.metadata().items()), width=280
        )

    def __panel__(self) -> pn.viewable.Viewable:
        """The map, as wide as the column allows, its metadata list below it: beside it, a
        fixed-width map left the list no room at 900 px, where it was drawn over the map."""
        return pn.Column(self._width, self._map, self._metadata_pane, sizing_mode="stretch_width")
