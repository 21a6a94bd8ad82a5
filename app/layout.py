"""Composition of the dashboard: one factory, called once per browser session."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import panel as pn

from seamline.app.cli_args import HISTORY_ENV
from seamline.app.models import MODELS, eo_folder_from_env, models_from_env
from seamline.components.drift_view import DriftSeries, DriftView
from seamline.components.history_view import HistoryView
from seamline.components.inference_state import InferenceState
from seamline.components.inference_view import InferenceView
from seamline.components.model_picker import ModelPicker
from seamline.components.scene_picker import ScenePicker
from seamline.components.scene_view import SceneView
from seamline.core.data.remote import hosts_from_env
from seamline.core.serve.cache import ModelCache

PIPELINE = "prepare → predict → optimise → serve → monitor"
INTRO = (
    "**Seamline** runs a segmentation model over a whole scene, tile by tile without seams, "
    "makes it fast (BF16 / INT8) and watches its inputs for drift. **1.** Pick a scene or "
    "upload yours, **2.** predict it under *Predict & optimise*, **3.** *Monitor drift*."
)


class Sections(NamedTuple):
    """What one session sees (``sidebar``, ``tabs``) and the state objects behind it."""

    sidebar: pn.Column
    tabs: pn.Tabs
    picker: ScenePicker
    models: ModelPicker
    scene_view: SceneView
    inference: InferenceState
    drift: DriftSeries


def create_sections(
    cache: ModelCache = MODELS,
    data_roots: Sequence[Path] = (),
    *,
    models: Sequence[str] | None = None,
    eo_folder: str | None = None,
    history: str | None = None,
    remote_hosts: Sequence[str] | None = None,
) -> Sections:
    """The sidebar (pipeline and scene choice) and the sections, built fresh: every session
    gets its own objects (no shared mutable state besides the model cache).

    ``data_roots`` are the server folders a visitor may read (the drift section's folder of
    GeoTIFFs); with none, only the demo data is read. ``models`` are the models offered (the
    first is chosen; default: ``seamline serve --model``'s, else the demo model): it predicts
    the scenes and the drift section's class shares. ``eo_folder`` is the real NDVI series
    offered as a drift source (default: ``SEAMLINE_EO_TIMESERIES``). ``history`` is the drift
    history whose recorded checks get a section (default: ``SEAMLINE_HISTORY``; none: no
    section). ``remote_hosts`` are the hosts whose COG URLs a visitor may open as the scene
    (default: ``SEAMLINE_REMOTE_HOSTS``; none: no URL source)."""
    hosts = hosts_from_env() if remote_hosts is None else remote_hosts
    picker = ScenePicker(remote_hosts=list(hosts))
    scene_view = SceneView(scene=picker.scene, aoi=picker.aoi, title=picker.title)
    chooser = ModelPicker(cache, models or models_from_env())
    inference = InferenceState(cache, model=chooser.model, scene=picker.scene)

    def follow(*_events) -> None:  # the scene picked drives every section
        scene_view.param.update(scene=picker.scene, aoi=picker.aoi, title=picker.title)
        inference.scene = picker.scene

    picker.param.watch(follow, ["scene", "aoi", "title"])
    sidebar = pn.Column(
        pn.pane.Markdown(INTRO),
        pn.pane.Markdown("### 1. Scene", margin=(0, 10)),
        picker,
        pn.pane.Markdown("### Model", margin=(10, 10, 0, 10)),
        chooser,
        pn.pane.Markdown(f"<small>**Pipeline:** {PIPELINE}</small>"),
        sizing_mode="stretch_width",
    )
    drift = DriftSeries(
        data_roots=list(data_roots),
        model=chooser.model,
        eo_folder=eo_folder_from_env() if eo_folder is None else eo_folder,
    )

    def use_model(*_events) -> None:  # one model for every section
        inference.model = drift.model = chooser.model

    chooser.param.watch(use_model, "model")
    tabs = pn.Tabs(
        ("Scene", scene_view),
        ("Predict & optimise", InferenceView(state=inference)),
        ("Monitor drift", DriftView(state=drift)),
        dynamic=True,
        sizing_mode="stretch_width",
    )
    history = os.environ.get(HISTORY_ENV) if history is None else history
    if history:  # the checks production predictions recorded (seamline serve --history)
        tabs.append(("Recorded checks", HistoryView(db=history)))
    return Sections(sidebar, tabs, picker, chooser, scene_view, inference, drift)


def create_app(
    cache: ModelCache = MODELS, data_roots: Sequence[Path] = ()
) -> pn.template.BaseTemplate:
    """The dashboard as served by ``panel serve``: the sections in a template."""
    sections = create_sections(cache, data_roots)
    template = pn.template.BootstrapTemplate(
        title="Seamline", header_background="#1f4e5f", sidebar_width=330
    )
    template.sidebar.append(sections.sidebar)
    template.main.append(sections.tabs)
    return template


def create_inline(cache: ModelCache = MODELS, data_roots: Sequence[Path] = ()) -> pn.Row:
    """The same dashboard for a notebook cell: sidebar beside the sections. Call
    ``pn.extension("tabulator", inline=True)`` first: the JavaScript then comes from the
    installed packages, not a CDN (an air-gapped Jupyter shows an empty cell otherwise), and
    includes Tabulator's, which the runs table needs (the sections are rendered on demand)."""
    sections = create_sections(cache, data_roots)
    return pn.Row(
        pn.Column(sections.sidebar, width=300), sections.tabs, sizing_mode="stretch_width"
    )
