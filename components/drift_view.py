"""The monitoring section: drift of a dated series of scenes against a baseline, over time.

:func:`seamline.core.monitor.series.monitor_series` is the pure part (no Panel): it fits a baseline
on the first clear dates of a series, checks every date with
:func:`seamline.core.monitor.check.check` and assesses the re-fit response on one date.
:class:`DriftSeries` holds the choices and the results (params only, testable without a browser);
its :meth:`~DriftSeries.compute` loads the series of the chosen source and runs it, in a worker
thread when the view calls it. :class:`DriftView` is the thin view: score over time with the
threshold and the alerts, the scene and its per-tile drift map of one date (datashader, the scene's
own CRS), predicted class shares over time and the re-fit response before/after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the backend that .opts() needs)
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr
from holoviews.operation.datashader import regrid

from seamline.components.errors import unexpected_errors
from seamline.components.fit_width import grows, wrapping_row
from seamline.components.map_axes import map_axes, map_frame
from seamline.components.scene_view import default_rgb_bands, rgb_composite
from seamline.core.data.io import band_names, valid_mask
from seamline.core.demo.series import eo_series, synthetic_series
from seamline.core.errors import SeamlineError
from seamline.core.monitor.check import SCORE_THRESHOLD
from seamline.core.monitor.series import DatedScene, folder_series, monitor_series

__all__ = [
    "score_plot",
    "DriftSeries",
    "DriftView",
]

SCORE_FLOOR = 1e-2
"""Scores are drawn on a log axis (injected changes reach hundreds); zero is drawn here."""

ALERT_COLOR = "#d62728"
OK_COLOR = "#1f4e5f"
BASELINE_COLOR = "#8c8c8c"
SOURCES = ("synthetic", "eo_timeseries", "folder")


def refit_table(refit: dict[str, Any]) -> pd.DataFrame:
    """The re-fit response as rows (score, flag, agreement) x columns (before, after)."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    return pd.DataFrame(
        {
            "before": [
                f"{refit['score_before']:.2f}",
                "drift" if refit["drift_before"] else "ok",
                pct(refit["agreement_before"]),
            ],
            "after": [
                f"{refit['score_after']:.2f}",
                "drift" if refit["drift_after"] else "ok",
                pct(refit["agreement_after"]),
            ],
        },
        index=[
            "score (x threshold)",
            "flag",
            "agreement with previous date's prediction",
        ],
    )


# --------------------------------------------------------------------------- state


class DriftSeries(param.Parameterized):
    """Choices of a monitoring run and its results (params only; no Panel)."""

    source = param.Selector(objects=list(SOURCES), default="synthetic", label="Source")
    folder = param.String(default="", label="Folder of GeoTIFFs", doc="For source 'folder'.")
    data_roots = param.List(
        default=[],
        doc="Server folders the 'folder' source may read (``seamline serve --data-root``); "
        "a folder outside them is refused, and none is read when empty.",
    )
    eo_folder = param.String(
        default="",
        doc="The eo_timeseries folder (``seamline serve --eo-timeseries``); the source is "
        "offered if it exists.",
    )
    model = param.String(
        default=None, allow_None=True,
        doc="The model whose class shares are predicted (a name or a model file).",
    )
    n_dates = param.Integer(default=10, bounds=(3, 24), label="Dates (synthetic)")
    size = param.Integer(default=128, bounds=(64, 512), label="Scene size (px, synthetic)")
    seed = param.Integer(default=0, bounds=(0, None), label="Seed (synthetic)")
    baseline_count = param.Integer(default=3, bounds=(1, 12), label="Baseline dates")
    with_model = param.Boolean(default=True, label="Predict class shares")
    tile_size = param.Integer(default=16, bounds=(4, 256), label="Drift map cell (px)")
    date_index = param.Integer(default=0, bounds=(0, None), doc="The date shown on the maps.")

    results = param.DataFrame(default=None, allow_None=True, doc="One row per date.")
    class_shares = param.DataFrame(default=None, allow_None=True, doc="Time x class shares.")
    class_colors = param.List(default=[], item_type=str)
    maps = param.List(default=[], doc="Per date the drift map DataArray (or None).")
    scenes = param.List(default=[], item_type=DatedScene, doc="The series checked.")
    refit = param.Dict(default=None, allow_None=True, doc="The re-fit response before/after.")
    running = param.Boolean(default=False)
    done = param.Integer(default=0)
    total = param.Integer(default=0)
    message = param.String(default="", doc="One sentence when the last run failed.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._offer_sources()
        if "with_model" not in params:
            self._default_model()

    @param.depends("eo_folder", watch=True)
    def _offer_sources(self) -> None:
        present = bool(self.eo_folder) and Path(self.eo_folder).is_dir()
        self.param.source.objects = [s for s in SOURCES if present or s != "eo_timeseries"]
        if self.source not in self.param.source.objects:
            self.source = "synthetic"

    @param.depends("source", watch=True)
    def _default_model(self) -> None:
        # NDVI-only data has no model input
        self.with_model = self.model is not None and self.source == "synthetic"

    def load(self) -> list[DatedScene]:
        """The series of the chosen source (raises SeamlineError for a bad folder)."""
        if self.source == "synthetic":
            return synthetic_series(self.n_dates, self.size, seed=self.seed)
        if self.source == "eo_timeseries":
            return eo_series(self.eo_folder)
        return folder_series(self.folder, roots=self.data_roots)

    def _progress(self, done: int, total: int) -> None:
        self.param.update(done=done, total=total)

    def compute(self, progress: Callable[[int, int], None] | None = None) -> bool:
        """Load the series, run :func:`monitor_series` and show its results.

        Slow (seconds): the view calls it in a worker thread. ``progress(done, total)`` is
        called after each step besides the ``done``/``total`` params. A user mistake (bad
        folder, too few clear dates, bands the model cannot read) sets ``message`` and
        returns False; the previous results stay.
        """

        def step(done: int, total: int) -> None:
            self._progress(done, total)
            if progress is not None:
                progress(done, total)

        self.param.update(running=True, message="", done=0, total=0)
        try:
            series = self.load()
            outcome = monitor_series(
                series,
                baseline_count=self.baseline_count,
                model=self.model if self.with_model else None,
                tile_size=self.tile_size,
                progress=step,
            )
        except SeamlineError as exc:
            self.message = str(exc)
            return False
        finally:
            self.running = False  # whatever happened: the Run button works again
        self.param.update(
            scenes=list(series),
            results=outcome.results,
            class_shares=outcome.class_shares,
            class_colors=list(outcome.class_colors),
            maps=outcome.maps,
            refit=outcome.refit,
            date_index=min(self.date_index, len(series) - 1),
        )
        return True


# --------------------------------------------------------------------------- view


def score_plot(results: pd.DataFrame) -> hv.Overlay:
    """Score over time (log axis): the curve, baseline/ok/alert markers and the threshold."""
    frame = results[["time", "score", "driver", "events", "baseline", "drift"]].assign(
        score=results["score"].clip(lower=SCORE_FLOOR)
    )
    vdims = ["score", "driver", "events"]
    groups = (
        ("baseline", frame["baseline"], BASELINE_COLOR, 8),
        ("within threshold", ~frame["baseline"] & ~frame["drift"], OK_COLOR, 8),
        ("drift", frame["drift"], ALERT_COLOR, 11),
    )
    markers = [
        hv.Scatter(frame[mask], "time", vdims, label=label).opts(
            color=color, size=size, tools=["hover"]
        )
        for label, mask, color, size in groups
        if mask.any()  # no empty legend entries
    ]
    threshold = hv.HLine(SCORE_THRESHOLD).opts(
        color=ALERT_COLOR, line_dash="dashed", line_width=1.5
    )
    curve = hv.Curve(frame, "time", "score").opts(color=OK_COLOR, line_width=2)
    return curve * threshold * hv.Overlay(markers)


class DriftView(pn.viewable.Viewer):
    """Controls, Run button with progress, drift score over time with alerts, the scene and
    drift map of one date, class shares over time and the re-fit response."""

    state = param.ClassSelector(class_=DriftSeries)

    def __init__(self, **params: Any) -> None:
        params.setdefault("state", DriftSeries())
        super().__init__(**params)
        self._button = pn.widgets.Button(
            name="Run monitoring",
            button_type="primary",
            disabled=self.state.param.running,
            sizing_mode="stretch_width",
        )
        self._button.on_click(self._run)
        self._slider = pn.widgets.DiscreteSlider(
            name="Date", options={"-": 0}, value=0, sizing_mode="stretch_width", disabled=True
        )
        self._slider.param.watch(self._slider_moved, "value")
        self.state.param.watch(self._sync_slider, ["results", "date_index"])
        self._sync_slider()

    async def _run(self, _event: Any = None) -> None:
        """Compute in a worker thread: the page stays responsive and the bar advances."""
        with unexpected_errors(self.state):
            await asyncio.to_thread(self.state.compute)

    def _slider_moved(self, event: param.parameterized.Event) -> None:
        self.state.date_index = event.new

    def _sync_slider(self, *_events: param.parameterized.Event) -> None:
        results = self.state.results
        if results is None:
            return
        labels = [f"{t:%Y-%m-%d}" for t in results["time"]]
        options = {
            f"{label} ({i + 1})" if labels.count(label) > 1 else label: i  # same-day dates
            for i, label in enumerate(labels)
        }
        if self._slider.options != options:
            self._slider.param.update(options=options, disabled=False)
        self._slider.value = self.state.date_index

    # ---- elements (pure views of the state; tested headless)

    def score_overlay(self) -> hv.Overlay:
        """The score plot of the current results, titled and labelled."""
        return score_plot(self.state.results).opts(
            title="Drift score over time (1 = calibrated threshold)",
            logy=True,
            xlabel="date",
            ylabel="score (x threshold, log)",
            responsive=True,
            height=260,
            legend_position="right",
            show_grid=True,
            padding=0.05,
        )

    def date_text(self, index: int | None = None) -> str:
        """Date, events, score and driver of one date (default: ``date_index``), as Markdown."""
        row = self.state.results.iloc[self.state.date_index if index is None else index]
        verdict = (
            f'<span style="color:{ALERT_COLOR};font-weight:600">drift</span>'
            if row["drift"]
            else "within threshold"
        )
        tiles = "" if np.isnan(row["drifted_tiles"]) else f", {row['drifted_tiles']:.0%} of tiles"
        role = " (baseline date)" if row["baseline"] else ""
        events = row["events"] or "none known"
        return (
            f"**{row['time']:%Y-%m-%d}**{role} · events: {events} · score "
            f"**{row['score']:.2f}** ({verdict}{tiles}), driven by {row['driver']}"
        )

    def scene_element(self, index: int | None = None) -> hv.RGB | hv.Image:
        """One date's scene in its CRS: RGB composite, or one band (NDVI: red-yellow-green)."""
        index = self.state.date_index if index is None else index
        item = self.state.scenes[index]
        scene = item.scene
        title = f"Scene {item.time:%Y-%m-%d}"
        if scene.sizes["band"] >= 3:
            rgba = rgb_composite(scene, default_rgb_bands(scene))
            if scene.rio.transform().e > 0:  # south-up: HoloViews wants row 0 at the top
                rgba = rgba[::-1]
            rgb = hv.RGB(rgba, bounds=scene.rio.bounds(), vdims=list("RGBA"), label=title)
            return rgb.opts(**map_axes(scene.rio.crs))
        name = band_names(scene)[0]
        band = scene.isel(band=0).where(valid_mask(scene)).astype("float32").rename(name)
        image = hv.Image(band, kdims=["x", "y"], vdims=[name], label=title)
        ndvi = {"clim": (-1.0, 1.0)} if name == "ndvi" else {}
        return image.opts(cmap="RdYlGn", colorbar=True, clipping_colors={"NaN": "white"},
                          **ndvi, **map_axes(scene.rio.crs))  # fmt: skip

    def map_element(self, index: int | None = None) -> hv.Image:
        """One date's per-tile drift map (ratio to the tile threshold: above 1 = drifted)."""
        index = self.state.date_index if index is None else index
        drift_map = self.state.maps[index]
        time = self.state.results["time"].iat[index]
        if drift_map is None:
            empty = xr.DataArray(
                np.full((1, 1), np.nan), dims=("y", "x"), coords={"y": [0], "x": [0]}
            )
            label = f"No drift map {time:%Y-%m-%d}: scene off the baseline grid"
            return hv.Image(empty, kdims=["x", "y"], vdims=["drift"], label=label)
        return hv.Image(
            drift_map, kdims=["x", "y"], vdims=["drift"], label=f"Drift per tile {time:%Y-%m-%d}"
        ).opts(
            cmap="RdYlGn_r",
            clim=(0.0, 2.0 * SCORE_THRESHOLD),
            colorbar=True,
            clabel="drift (x tile threshold)",
            clipping_colors={"NaN": "#dddddd"},
            tools=["hover"],
            **map_axes(self.state.scenes[index].scene.rio.crs),  # the drift map's grid
        )

    def shares_element(self) -> hv.Overlay:
        """Predicted class shares over time as stacked areas (one colour per class)."""
        shares = self.state.class_shares
        colors = self.state.class_colors or hv.Cycle.default_cycles["default_colors"]
        times = shares.index.to_numpy()
        areas = [
            hv.Area((times, shares[name].to_numpy()), "time", "share", label=name).opts(
                color=colors[i % len(colors)], line_width=0, fill_alpha=0.85
            )
            for i, name in enumerate(shares.columns)
        ]
        return hv.Area.stack(hv.Overlay(areas)).opts(
            title="Predicted class shares",
            xlabel="date",
            ylabel="share of valid pixels",
            ylim=(0, 1),
            responsive=True,
            height=240,
            legend_position="right",
        )

    # ---- panes

    def controls(self) -> pn.viewable.Viewable:
        """The run's choices, the Run button, the progress bar and the error line."""
        state = self.state
        progress = pn.widgets.Progress(
            name="Monitoring",
            value=state.param.done,
            max=pn.bind(lambda total: max(total, 1), state.param.total),
            active=state.param.running,
            bar_color="primary",
            sizing_mode="stretch_width",
        )
        synthetic = pn.bind(lambda source: source == "synthetic", state.param.source)
        fit = {"sizing_mode": "stretch_width"}
        return pn.Column(
            pn.widgets.Select.from_param(state.param.source, **fit),
            pn.widgets.TextInput.from_param(
                state.param.folder,
                placeholder="/path/to/geotiffs",
                visible=pn.bind(lambda s: s == "folder", state.param.source),
                **fit,
            ),
            pn.widgets.IntSlider.from_param(state.param.n_dates, visible=synthetic, **fit),
            pn.widgets.IntSlider.from_param(state.param.size, step=64, visible=synthetic, **fit),
            pn.widgets.IntSlider.from_param(state.param.baseline_count, **fit),
            pn.widgets.IntInput.from_param(state.param.tile_size, step=8, **fit),
            pn.widgets.Checkbox.from_param(state.param.with_model, **fit),
            self._button,
            progress,
            pn.pane.Alert(
                state.param.message, alert_type="danger", visible=pn.bind(bool, state.param.message)
            ),
            pn.pane.Markdown(
                "The baseline is the first clear dates; thresholds are calibrated on it "
                "(leave-one-out). Score = largest metric / its threshold.",
                styles={"color": "#555", "font-size": "12px"},
            ),
            sizing_mode="stretch_width",
        )

    @param.depends("state.results")
    def _score_pane(self) -> pn.viewable.Viewable:
        if self.state.results is None:
            return pn.pane.Markdown(
                "Press **Run monitoring** to fit the baseline and check every date."
            )
        return pn.pane.HoloViews(self.score_overlay(), sizing_mode="stretch_width")

    @param.depends("state.results", "state.date_index")
    def _date_pane(self) -> pn.viewable.Viewable:
        if self.state.results is None:
            return pn.Spacer(height=0)
        return pn.pane.Markdown(self.date_text(), sizing_mode="stretch_width")

    @param.depends("state.results")
    def _maps_pane(self) -> pn.viewable.Viewable:
        if self.state.results is None:
            return pn.Spacer(height=0)
        index = self.state.param.date_index
        # 1:1 frames that fit side by side beside the controls at 1280 x 800 (300 px frames
        # were cut off there); the drift map shares the scene's y axis labels.
        frame = map_frame(self.state.scenes[0].scene, max_width=220, max_height=240)
        width, height = frame["frame_width"], frame["frame_height"]
        frame = {**frame, "xticks": 3}  # six-digit metre labels collided at this width
        scene = regrid(hv.DynamicMap(pn.bind(self.scene_element, index))).opts(**frame)
        drift = regrid(hv.DynamicMap(pn.bind(self.map_element, index))).opts(
            yaxis=None, **frame
        )
        # Two fixed-size panes (one above the other in a narrow window): a holoviews Layout
        # here rendered at 0 px inside the template's Tabs. Axes are not linked: Panel would
        # link them to every x/y plot of the page, the other sections' scene included.
        return wrapping_row(
            pn.pane.HoloViews(scene, width=width + 110, height=height + 70, linked_axes=False),
            pn.pane.HoloViews(drift, width=width + 90, height=height + 70, linked_axes=False),
        )

    @param.depends("state.class_shares")
    def _shares_pane(self) -> pn.viewable.Viewable:
        if self.state.class_shares is None:
            return pn.pane.Markdown(
                "Class shares need a model: tick *Predict class shares* and run again.",
                styles={"color": "#555"},
            )
        return pn.pane.HoloViews(self.shares_element(), sizing_mode="stretch_width")

    @param.depends("state.refit")
    def _refit_pane(self) -> pn.viewable.Viewable:
        refit = self.state.refit
        if refit is None:
            return pn.Spacer(height=0)
        if refit["drift_after"]:
            verdict = "still drifting: more changed than a sensor gain/offset"
        elif refit["drift_before"]:
            verdict = "back under the threshold"
        else:
            verdict = "within the threshold before and after"
        events, caveat = "", ""
        if refit["reason"] == "highest score":
            events = f"; events: {refit['events'] or 'none known'}"
            caveat = (
                " Quantile matching also erases real change (clouds, season, land cover): "
                "it is the response to a sensor step, not a fix for this date."
            )
        return pn.Column(
            pn.pane.Markdown(
                f"Re-fit normalisation (quantile-match each band to the baseline) on "
                f"**{refit['time']:%Y-%m-%d}** ({refit['reason']}{events}): {verdict}.{caveat}"
            ),
            pn.pane.DataFrame(refit_table(refit), sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def __panel__(self) -> pn.viewable.Viewable:
        """Controls on the left; score, date slider, maps, class shares and re-fit right."""
        details = wrapping_row(
            grows(pn.Column(self._shares_pane, sizing_mode="stretch_width"), 300),
            pn.Card(self._refit_pane, title="Re-fit response", width=420),
        )
        content = pn.Column(
            pn.pane.Markdown("### Drift monitoring", margin=(0, 10)),
            self._score_pane,
            self._slider,
            self._date_pane,
            self._maps_pane,
            details,
            sizing_mode="stretch_width",
        )
        return wrapping_row(pn.Column(self.controls(), width=280), grows(content, 460))
