"""SceneView state -> view logic, without a browser."""

import geopandas as gpd
import holoviews as hv
import numpy as np
import panel as pn
import pytest
from shapely.geometry import box

from seamline.components.fit_width import MAP_CHROME, MIN_FRAME
from seamline.components.map_axes import map_axes, map_frame
from seamline.components.scene_view import SceneView, default_rgb_bands, rgb_composite
from seamline.core.demo.data import sentinel2_aoi, sentinel2_sample
from seamline.core.demo.synthetic import make_scene


def test_rgb_composite_stretches_and_hides_nodata():
    scene = sentinel2_sample()
    scene[:, :10, :10] = 0
    rgba = rgb_composite(scene, default_rgb_bands(scene))
    assert rgba.shape == (200, 300, 4) and rgba.dtype == np.uint8
    assert (rgba[:10, :10, 3] == 0).all() and (rgba[10:, 10:, 3] == 255).all()
    assert rgba[..., :3].max() == 255 and rgba[10:, 10:, :3].min() == 0  # 2-98 % stretch


def test_default_rgb_bands_by_name_then_order():
    assert default_rgb_bands(sentinel2_sample()) == ("red", "green", "blue")
    unnamed = sentinel2_sample().assign_coords(band=[f"band_{i}" for i in range(1, 7)])
    assert default_rgb_bands(unnamed) == ("band_1", "band_2", "band_3")


def test_view_follows_scene_and_aoi_params():
    view = SceneView(scene=sentinel2_sample(), aoi=sentinel2_aoi())
    image = view.image()
    assert isinstance(image, hv.RGB)
    assert image.bounds.lbrt() == sentinel2_sample().rio.bounds()
    ring = view.outline().data[0]
    left, bottom, right, top = sentinel2_sample().rio.bounds()
    assert left < ring[:, 0].min() and ring[:, 0].max() < right  # reprojected 4326 -> UTM
    assert bottom < ring[:, 1].min() and ring[:, 1].max() < top
    assert view.metadata()["CRS"] == "EPSG:32719"
    view.scene = sentinel2_sample().isel(x=slice(0, 100))
    assert view.metadata()["Size"] == "100 x 200 px"
    view.aoi = None
    assert len(view.outline().data) == 0


def test_panel_renders_a_bokeh_model():
    aoi = gpd.GeoDataFrame(geometry=[box(600500, 4698500, 601500, 4699500)], crs="EPSG:32719")
    root = pn.panel(SceneView(scene=sentinel2_sample(), aoi=aoi)).get_root()
    assert len(root.children) == 3 and len(_figures(root)) == 1  # width probe, map, metadata


@pytest.mark.parametrize("crs, labels, formatter", [
    ("EPSG:32633", ("x (m)", "y (m)"), "%.0f"),
    ("EPSG:4326", ("longitude (°)", "latitude (°)"), "%.4f"),
    ("EPSG:2263", ("x (ftUS)", "y (ftUS)"), "%.0f"),
    ("+proj=utm +zone=33 +units=km", ("x (kilometre)", "y (kilometre)"), "%.2f"),
    (None, ("x", "y"), "%.2f"),  # a scene without a CRS still draws
])
def test_map_axes_name_the_crs_units(crs, labels, formatter):
    axes = map_axes(crs)
    assert (axes["xlabel"], axes["ylabel"]) == labels and axes["xformatter"] == formatter


def test_a_scene_without_a_crs_draws_with_plain_axes():
    scene = make_scene(64, 64)[0].drop_vars("spatial_ref")
    assert scene.rio.crs is None  # the dashboard reads uploads without a CRS too
    plot = hv.render(SceneView(scene=scene, title="t").plot())
    assert plot.xaxis[0].axis_label == "x"


def test_a_geographic_scene_is_drawn_in_degrees():
    scene = make_scene(64, 64, crs="EPSG:4326", origin=(12.0, 46.0), resolution=0.0001)[0]
    plot = hv.render(SceneView(scene=scene, title="t").plot())
    assert plot.xaxis[0].axis_label == "longitude (°)"
    assert plot.yaxis[0].axis_label == "latitude (°)"


@pytest.mark.parametrize("height, width", [(256, 256), (128, 512), (600, 150)])
def test_map_frame_is_one_to_one_and_bounded(height, width):
    scene = make_scene(height, width)[0]
    frame = map_frame(scene, max_width=580, max_height=560)
    assert frame["frame_width"] <= 580 and frame["frame_height"] <= 560
    assert max(frame["frame_width"] / 580, frame["frame_height"] / 560) > 0.99  # fills a side
    # metres per screen pixel are the same along x and y: 1:1
    assert frame["frame_width"] / width == pytest.approx(frame["frame_height"] / height, rel=0.01)


def _figures(root) -> list:
    from bokeh.models import Plot

    return list(root.select({"type": Plot}))


def test_a_new_scene_gets_a_new_figure_framed_to_it():
    # The blank-map defect: switching scenes kept the demo's ranges and title.
    view = SceneView(scene=sentinel2_sample(), title="Sentinel-2 demo")
    root = pn.panel(view).get_root()
    (first,) = _figures(root)
    scene = make_scene(512, 256, crs="EPSG:32633", seed=3)[0]
    view.param.update(scene=scene, title="Synthetic")
    (figure,) = _figures(root)
    assert figure is not first and figure.title.text == "Synthetic"
    assert figure.frame_width / figure.frame_height == pytest.approx(256 / 512, rel=0.01)
    left, bottom, right, top = scene.rio.bounds()
    rendered = hv.render(view.plot())
    assert (rendered.x_range.start, rendered.x_range.end) == pytest.approx((left, right))
    assert (rendered.y_range.start, rendered.y_range.end) == pytest.approx((bottom, top))


def test_the_map_is_framed_to_the_width_its_column_has():
    """A 580 px frame overflowed a 900 px window (a 540 px column): the browser's width of
    the column sets the frame, 1:1 kept, and a wide column keeps the cap."""
    view = SceneView(scene=sentinel2_sample(), title="Sentinel-2 demo")  # 300 x 200 px, 3:2
    root = pn.panel(view).get_root()
    (wide,) = _figures(root)
    assert view.map_width == 580 and wide.frame_width == 580  # before the browser says
    view._width.available = 540  # what the browser measured in a 900 px window
    (narrow,) = _figures(root)
    assert view.map_width == 540 - MAP_CHROME == narrow.frame_width
    assert narrow.frame_width / narrow.frame_height == pytest.approx(3 / 2, rel=0.01)
    view._width.available = 100  # narrower than any map: the smallest frame (it scrolls)
    assert view.map_width == MIN_FRAME
    view._width.available = 1560
    assert view.map_width == 580  # never wider than the cap
