"""The inference section: tiling and precision controls, the class map, seams and latency.

:class:`~seamline.components.inference_state.InferenceState` holds the choices and the
results (params only, testable without a browser); its ``compute`` is the pure, slow part and
runs in a worker thread; :class:`InferenceView` is the thin view over it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import replace

import geopandas as gpd
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (the backend .opts() validates against)
import numpy as np
import pandas as pd
import panel as pn
import param
import shapely
import xarray as xr
from holoviews.operation.datashader import regrid

from seamline.components.errors import unexpected_errors
from seamline.components.fit_width import grows, map_width_probe, wrapping_row
from seamline.components.inference_state import (
    SETTINGS,
    InferenceState,
    readable_runs,
)
from seamline.components.map_axes import map_axes, map_frame
from seamline.core.errors import SeamlineError
from seamline.core.predict.tiling import TileGrid
from seamline.core.serve.runs import ON_CALIBRATION_TILES, RunResult
from seamline.core.serve.seams import NAIVE, seam_report


def class_image(classes: xr.DataArray, colors: list[str], names: list[str]) -> hv.Image:
    """A class-id map as an ``hv.Image`` (nodata transparent) with one colour per class."""
    data = classes.where(classes != classes.rio.nodata).astype("float32")
    return hv.Image(data, kdims=["x", "y"], vdims=["class"]).opts(
        cmap=colors,
        clim=(-0.5, len(names) - 0.5),
        color_levels=len(names),
        clipping_colors={"NaN": (0, 0, 0, 0)},
    )


def grid_outline(grid: TileGrid, scene: xr.DataArray) -> hv.Rectangles:
    """The tiles' rectangles in the scene's CRS (the last row/column shifted to the border)."""
    left, top = scene.rio.transform().c, scene.rio.transform().f
    resx, resy = scene.rio.resolution()
    origins = grid.origins()
    end = np.minimum(origins + grid.tile, [grid.height, grid.width])
    return hv.Rectangles(
        (
            left + origins[:, 1] * resx,
            top + end[:, 0] * resy,
            left + end[:, 1] * resx,
            top + origins[:, 0] * resy,
        )
    ).opts(
        fill_alpha=0,
        line_color="white",
        line_width=1,
        line_alpha=0.8,
    )


def polygon_outline(polygons: gpd.GeoDataFrame) -> hv.Path:
    """Every polygon ring as one NaN-separated path (one glyph, however many polygons)."""
    rings = shapely.get_rings(polygons.geometry.values)
    coords, index = shapely.get_coordinates(rings, return_index=True)
    breaks = np.flatnonzero(np.diff(index)) + 1
    path = np.insert(coords, breaks, np.nan, axis=0)
    return hv.Path([path]).opts(color="black", line_width=1, line_alpha=0.7)


def figure_html(name: str, value: str) -> str:
    """One figure of the latest run: its name small above its value large."""
    return (
        f'<div class="seamline-figure"><div style="font-size:12px;color:#555">{name}</div>'
        f'<div style="font-size:22px;font-weight:600">{value}</div></div>'
    )


def auto_reason(result: RunResult | None) -> str:
    """What auto picked and why, with the table it picked from folded below ("" for a run
    at another precision)."""
    if result is None or result.choice is None:
        return ""
    choice = result.choice
    rows = "\n".join(_measured_row(row) for row in choice.table())
    return (
        f"**Precision auto** picked {choice.reason}.\n\n<details><summary>What auto measured "
        f"on this machine ({choice.cpu}, {choice.tile_size} px tiles)</summary>\n\n"
        "| backend | ms per tile | vs FP32 | GFLOP/s | % of peak | agrees with FP32 | kept |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n</details>"
    )


def _measured_row(row: dict) -> str:
    """One backend of auto's table as a Markdown row (no figures where it failed to build)."""
    name = f"**{row['backend']}**" if row["chosen"] else row["backend"]
    figures = ["-"] * 5
    if not math.isnan(row["ms_per_tile"]):
        peak = row["percent_of_peak"]
        figures = [f"{row['ms_per_tile']:.1f}", f"{row['speedup']:.1f}x", f"{row['gflops']:.0f}",
                   "-" if peak is None else f"{peak:.0f}", f"{100 * row['agreement']:.2f} %"]
    kept = "yes" if row["kept"] else f"no: {row['note']}"
    return "| " + " | ".join([name, *figures, kept]) + " |"


def legend(names: list[str], colors: list[str]) -> str:
    """An HTML legend: one colour swatch per class."""
    items = "".join(
        f'<span style="margin-right:14px;white-space:nowrap"><span style="display:inline-block;'
        f'width:12px;height:12px;background:{c};margin-right:4px;border:1px solid #555">'
        f"</span>{n}</span>"
        for n, c in zip(names, colors, strict=True)
    )
    return f'<div style="font-size:13px">{items}</div>'


class InferenceView(pn.viewable.Viewer):
    """Controls, Run button with progress, class map with legend and tile grid, latency
    figures, seam diagnostic and the session's runs table and chart."""

    state = param.ClassSelector(class_=InferenceState)
    map_width = param.Integer(default=560, doc="The widest class map frame (the column's width).")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._width = map_width_probe(self)
        self._button = pn.widgets.Button(
            name="Run inference", button_type="primary", disabled=self.state.param.running
        )
        self._button.on_click(self._run)
        self._cancel = pn.widgets.Button(
            name="Cancel", button_type="warning", visible=self.state.param.running
        )
        self._cancel.on_click(lambda _event: self.state.cancel())
        self._seams_button = pn.widgets.Button(
            name="Show the seams", button_type="default", disabled=self.state.param.running
        )
        self._seams_button.on_click(self._seams)
        self._seam_plots = pn.Column(
            pn.pane.Markdown(
                "Tiles cut side by side change the model's input at every tile edge, and classes "
                "flip along the grid; overlapping tiles remove that. This sets tiles without "
                "overlap beside your tiling on this scene, both against the untiled run."
            )
        )

    async def _run(self, _event=None) -> None:
        """Compute in a worker thread (the page stays responsive), then show the result; a
        click while a run is in flight does nothing."""
        state = self.state
        if not state.begin():
            return
        try:
            with unexpected_errors(state):
                result = await asyncio.to_thread(state.compute)
                state.apply(result)
        except SeamlineError as exc:
            state.message = str(exc)
        finally:
            state.finish()

    async def _seams(self, _event=None) -> None:
        """Tiles without overlap beside the chosen tiling, zoomed on a tile corner with each
        grid drawn, and the difference to the untiled run in plain words."""
        state = self.state
        settings = state.settings()
        self._seam_plots[:] = [pn.indicators.LoadingSpinner(value=True, size=40)]
        try:
            report = await asyncio.to_thread(
                seam_report, state.scene, settings, state.cache, model=state.model
            )
        except SeamlineError as exc:
            self._seam_plots[:] = [pn.pane.Alert(str(exc), alert_type="danger")]
            return
        x0, x1, y0, y1 = report.window
        # Two 220 px frames side by side fit beside the controls at 1280 px (one above the
        # other in a narrower column): no toolbars, the right map shares the left one's y axis.
        frame = {"frame_width": 220, "frame_height": 220, "xlim": (x0, x1), "ylim": (y0, y1),
                 "toolbar": None, **map_axes(state.scene.rio.crs)}  # fmt: skip
        plots = []
        for classes, tiling, title, extra in (
            (report.naive, replace(settings, **NAIVE), "Tiles without overlap", {}),
            (report.chosen, settings, f"Your tiling ({settings.blend}, {settings.overlap} px)",
             {"yaxis": None}),
        ):  # fmt: skip
            image = class_image(classes, classes.attrs["colors"], classes.attrs["classes"])
            grid = grid_outline(state.grid(tiling), state.scene).opts(line_color="black")
            plots.append((image * grid).opts(title=title, **frame, **extra))
        self._seam_plots[:] = [
            wrapping_row(*[pn.pane.HoloViews(p, linked_axes=False) for p in plots]),
            pn.pane.Markdown(report.sentence(), sizing_mode="stretch_width"),
        ]

    def controls(self) -> pn.viewable.Viewable:
        """The widgets of the run's choices, the Run button and the progress bar."""
        state = self.state
        progress = pn.widgets.Progress(
            name="Tiles",
            value=state.param.done_tiles,
            active=state.param.running,
            max=pn.bind(lambda total: max(total, 1), state.param.total_tiles),
            sizing_mode="stretch_width",
            bar_color="primary",
        )
        return pn.Column(
            pn.widgets.Select.from_param(state.param.tile_size),
            pn.widgets.IntSlider.from_param(state.param.overlap, step=8),
            pn.pane.Markdown("Blend", margin=(0, 10)),
            pn.widgets.RadioButtonGroup.from_param(state.param.blend),
            pn.widgets.IntInput.from_param(state.param.batch_size),
            pn.pane.Markdown("Precision", margin=(0, 10)),
            pn.widgets.RadioButtonGroup.from_param(state.param.precision),
            pn.widgets.Select.from_param(state.param.device),
            pn.widgets.Checkbox.from_param(state.param.show_grid),
            pn.widgets.Checkbox.from_param(state.param.show_polygons),
            pn.widgets.FileDownload(
                callback=state.geopackage_file,
                filename="classes.gpkg",
                button_type="light",
                label="Download polygons (GeoPackage)",
                disabled=pn.bind(lambda result: result is None, state.param.result),
            ),
            pn.Row(self._button, self._cancel),
            progress,
            pn.pane.Markdown(self.state.param.phase, margin=(0, 10)),
            pn.pane.Alert(
                state.param.message, alert_type="danger", visible=pn.bind(bool, state.param.message)
            ),
            pn.pane.Alert(
                state.param.seams, alert_type="warning", visible=pn.bind(bool, state.param.seams)
            ),
            sizing_mode="stretch_width",
        )

    def _classes(self, result: RunResult | None) -> hv.Image:
        if result is None:  # hidden until a run: an empty map over the scene's extent
            bounds = self.state.scene.rio.bounds()
            empty = np.full((2, 2), np.nan, "float32")
            image = hv.Image(empty, bounds=bounds, kdims=["x", "y"], vdims=["class"])
        else:
            classes = result.classes
            image = class_image(classes, classes.attrs["colors"], classes.attrs["classes"])
        return image.opts(**map_axes(self.state.scene.rio.crs))

    def _grid(self, result: RunResult | None, show_grid: bool) -> hv.Rectangles:
        if result is None or not show_grid:
            return hv.Rectangles([])
        # the tiles of the run shown, not of the widgets (they may have changed since)
        return grid_outline(self.state.grid(result.settings), self.state.scene)

    def _polygons(self, outlines: gpd.GeoDataFrame | None) -> hv.Path:
        return hv.Path([]) if outlines is None else polygon_outline(outlines)

    def _class_map_plot(self) -> hv.Overlay:
        """The class map, tile grid and polygons as DynamicMaps over the state: a new run
        sends only the new regridded image to the page, not a new figure (a figure rebuilt
        for every run cost ~0.3 s on the server and more in the browser)."""
        state = self.state

        def stream(*names: str) -> list[hv.streams.Params]:
            return [hv.streams.Params(state, list(names))]

        # "first" samples one class per screen pixel (nearest, as GIS viewers show classes):
        # never a blend of ids, and 4x faster than "mode" on a 2048^2 map.
        image = regrid(hv.DynamicMap(self._classes, streams=stream("result")), aggregator="first")
        image = image.opts(**map_frame(state.scene, max_width=self.map_width, max_height=480))
        grid = hv.DynamicMap(self._grid, streams=stream("result", "show_grid"))
        polygons = hv.DynamicMap(self._polygons, streams=stream("outlines"))
        return image * grid * polygons

    @param.depends("state.scene", "map_width")
    def _class_map_pane(self) -> pn.pane.HoloViews:
        # Runs on one scene update the figure in place; a new scene gets a new figure, framed
        # to it (regrid's zoom range and the axes of the previous scene would hide it), with
        # its own ranges (Panel would link them to the scene map's, maybe another scene's).
        return pn.pane.HoloViews(self._class_map_plot(), linked_axes=False)

    def class_map(self) -> pn.viewable.Viewable:
        """The predicted classes (datashader-regridded, categorical) with a title and legend,
        or a prompt before the first run."""
        state = self.state
        has_result = pn.bind(lambda result: result is not None, state.param.result)

        def title(result: RunResult | None, *_choices) -> str:
            if result is None:
                return ""
            stale = (" · <span style='color:#b35900'>controls changed since: press Run "
                     "inference</span>" if result.settings != state.settings() else "")  # fmt: skip
            return f"**Predicted classes** ({result.settings.label()}){stale}"

        def legend_of(result: RunResult | None) -> str:
            attrs = {} if result is None else result.classes.attrs
            return legend(attrs.get("classes", []), attrs.get("colors", []))

        return pn.Column(
            pn.pane.Markdown(
                "Press **Run inference** to predict the scene.",
                visible=pn.bind(lambda shown: not shown, has_result),
            ),
            pn.pane.Markdown(
                pn.bind(title, state.param.result, *(state.param[n] for n in SETTINGS)),
                margin=(0, 10),
            ),
            # visibility on a Column: Panel 1.9 fails to pass ``visible`` refs through a
            # HoloViews pane to its Bokeh pane (a stylesheet type error on the server)
            pn.Column(
                pn.panel(self._class_map_pane),
                pn.pane.HTML(pn.bind(legend_of, state.param.result)),
                visible=has_result,
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )

    def figures(self) -> pn.FlexBox:
        """Latency and quality figures of the latest run (panes updated in place)."""
        result = self.state.param.result

        def cell(name: str, value: Callable[[RunResult], str]) -> pn.pane.HTML:
            def html(r: RunResult | None) -> str:
                return figure_html(name, "" if r is None else value(r))

            return pn.pane.HTML(pn.bind(html, result), width=150, margin=(4, 8))

        def agreement(r: RunResult) -> str:
            if r.agreement_fp32 is None:
                return "-"
            on_tiles = r.agreement_on == ON_CALIBRATION_TILES  # auto's: no FP32 run of the scene
            note = '<div style="font-size:12px">on calibration tiles</div>' if on_tiles else ""
            return f"{100 * r.agreement_fp32:.2f} %{note}"

        def waited(waited: float | None, reference: float | None) -> str:
            note = "" if reference is None else f" (FP32 reference {reference:.2f} s)"
            return figure_html(f"Total waited{note}", "" if waited is None else f"{waited:.2f} s")

        state = self.state
        return pn.FlexBox(
            pn.pane.HTML(pn.bind(waited, state.param.waited, state.param.reference_seconds),
                         width=230, margin=(4, 8)),  # fmt: skip
            cell("Prediction", lambda r: f"{r.seconds:.2f} s"),
            cell("Tile p50", lambda r: f"{r.tile_ms_p50:.1f} ms"),
            cell("Tile p95", lambda r: f"{r.tile_ms_p95:.1f} ms"),
            cell("Throughput", lambda r: f"{r.megapixels_per_s:.2f} Mpx/s"),
            cell("Backend", lambda r: r.backend),
            cell("Model size", lambda r: f"{r.size_mb:.2f} MB"),
            cell("Agreement with fp32", agreement),
            pn.pane.Markdown(pn.bind(auto_reason, result), sizing_mode="stretch_width",
                             margin=(0, 10)),  # fmt: skip
            visible=pn.bind(lambda r: r is not None, result),
        )

    def runs_view(self) -> pn.Column:
        """This session's runs as a table and a throughput chart (updated in place)."""
        runs = self.state.param.runs

        def chart(runs: pd.DataFrame) -> hv.Bars:
            if runs.empty:  # one blank bar: the axis is categorical from the start
                runs = pd.DataFrame({"run": [""], "megapixels_per_s": [0.0]})
            return hv.Bars(runs, "run", "megapixels_per_s").opts(
                responsive=True,
                height=220,
                xrotation=20,
                ylabel="Mpx/s",
                xlabel="",
                title="Throughput per run",
                color="#1f4e5f",
                framewise=True,
            )

        table = pn.widgets.Tabulator(
            pn.bind(readable_runs, runs),
            disabled=True,
            show_index=False,
            sizing_mode="stretch_width",
            height=180,
        )
        bars = hv.DynamicMap(chart, streams=[hv.streams.Params(self.state, ["runs"])])
        return pn.Column(
            table,
            pn.pane.HoloViews(bars, sizing_mode="stretch_width"),
            visible=pn.bind(lambda runs: not runs.empty, runs),
            sizing_mode="stretch_width",
        )

    def __panel__(self) -> pn.viewable.Viewable:
        """Controls on the left; figures, map, seams and runs on the right."""
        seams = pn.Card(
            self._seams_button,
            self._seam_plots,
            title="Seam diagnostic",
            collapsed=True,
            sizing_mode="stretch_width",
        )
        runs = pn.Card(self.runs_view(), title="Runs of this session", sizing_mode="stretch_width")
        content = pn.Column(self._width, self.figures(), self.class_map(), seams, runs,
                            sizing_mode="stretch_width")  # fmt: skip
        return wrapping_row(pn.Column(self.controls(), width=300), grows(content, 420))
