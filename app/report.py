"""``seamline report OUT.html``: the current figures as one self-contained HTML page.

For people who get a file, not a server: the scene, its class map at each precision with the
latency figures, and the runs table, rendered statically (datashader-regridded to page
resolution) with every script inlined, so the page opens offline.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import holoviews as hv
import pandas as pd
import panel as pn
from bokeh.resources import INLINE
from holoviews.operation.datashader import regrid

from seamline.app.cli_args import DEFAULT_MODEL
from seamline.app.models import MODELS
from seamline.components.inference_state import readable_runs
from seamline.components.inference_view import class_image, legend
from seamline.components.map_axes import map_axes
from seamline.components.scene_view import SceneView
from seamline.core.data.files import atomic_path, check_output_path
from seamline.core.demo.data import sentinel2_aoi, sentinel2_sample
from seamline.core.serve.cache import ModelCache
from seamline.core.serve.runs import RunSettings, run_inference

WIDTH = 560  # page pixels per map: what regrid renders to


def _static(element: hv.Element, **opts) -> hv.Element:
    """``element`` regridded once to page resolution (a file has no server to re-render)."""
    return regrid(element, dynamic=False, width=WIDTH, height=WIDTH, **opts)


def build_report(
    cache: ModelCache,
    *,
    model: str = DEFAULT_MODEL,
    precisions: Sequence[str] = ("fp32", "int8"),
    settings: RunSettings | None = None,
) -> pn.viewable.Viewable:
    """The report's layout for the Sentinel-2 demo scene, one run per precision."""
    scene, aoi = sentinel2_sample(), sentinel2_aoi()
    settings = settings or RunSettings()
    view = SceneView(scene=scene, aoi=aoi, title="Sentinel-2 demo scene (EPSG:32719)")
    overview = (_static(view.image()) * view.outline().opts(color="#ffcc00", line_width=2)).opts(
        title=view.title, data_aspect=1, frame_width=WIDTH, **map_axes(scene.rio.crs)
    )
    runs, maps, reference = [], [], None
    for precision in precisions:
        result = run_inference(
            scene, replace(settings, precision=precision), cache, model=model,
            reference=reference,
        )
        reference = reference if reference is not None else result.classes
        runs.append(result.row())
        names, colors = result.classes.attrs["classes"], result.classes.attrs["colors"]
        maps.append(
            _static(class_image(result.classes, colors, names), aggregator="first").opts(
                title=f"Classes, {result.settings.label()}", data_aspect=1, frame_width=WIDTH,
                **map_axes(scene.rio.crs),
            )
        )  # fmt: skip
    table = readable_runs(pd.DataFrame(runs))
    metadata = "\n".join(f"- **{k}**: {v}" for k, v in view.metadata().items())
    return pn.Column(
        pn.pane.Markdown("# Seamline report\nprepare → predict → optimise → serve → monitor"),
        pn.Row(pn.pane.HoloViews(overview), pn.pane.Markdown(metadata, width=320)),
        pn.pane.HoloViews(hv.Layout(maps).cols(2)),
        pn.pane.HTML(legend(names, colors)),
        pn.pane.Markdown("## Runs"),
        pn.pane.DataFrame(table, index=False),
    )


def _inline_panel_css(html: str) -> str:
    """Replace Panel's stylesheet links to its CDN with ``data:`` URLs of the same files
    from the installed package: ``save(resources=INLINE)`` inlines scripts but leaves those
    links (holoviz/panel#6759, #3590), which fail offline."""
    dist = Path(pn.__file__).parent / "dist"

    def inline(match: re.Match) -> str:
        local = dist / match.group(1)
        if not local.is_file():
            return match.group(0)
        return "data:text/css;base64," + base64.b64encode(local.read_bytes()).decode()

    return re.sub(
        r"https://cdn\.holoviz\.org/panel/[^/]+/dist/([^\"'?\\]+)(\?[^\"'\\]*)?", inline, html
    )


def write_report(path: str | os.PathLike, cache: ModelCache | None = None) -> Path:
    """Write the report to ``path`` (atomically: no partial file on failure)."""
    path = check_output_path(path)
    layout = build_report(cache or MODELS)
    html = io.StringIO()
    with pn.config.set(inline=True):  # Panel's own stylesheets too, not only Bokeh's scripts
        layout.save(html, resources=INLINE, title="Seamline report")
    with atomic_path(path) as tmp:
        tmp.write_text(_inline_panel_css(html.getvalue()))
    return path
