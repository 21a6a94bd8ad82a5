"""Composition of the dashboard: one factory, called once per browser session."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import panel as pn

from components.drift_view import DriftSeries, DriftView
from components.inference_view import InferenceState, InferenceView
from components.scene_picker import ScenePicker
from components.scene_view import SceneView
from core.latency import ModelCache

PIPELINE = "prepare → predict → optimise → serve → monitor"
MODELS = ModelCache(freeze=True)  # shared on purpose: sessions reuse the warm, quantized models


class Sections(NamedTuple):
    """What one session sees (``sidebar``, ``tabs``) and the state objects behind it."""

    sidebar: pn.Column
    tabs: pn.Tabs
    picker: ScenePicker
    scene_view: SceneView
    inference: InferenceState
    drift: DriftSeries


def create_sections(cache: ModelCache = MODELS, data_roots: Sequence[Path] = ()) -> Sections:
    """The sidebar (pipeline and scene choice) and the sections, built fresh: every session
    gets its own objects (no shared mutable state besides the model cache).

    ``data_roots`` are the server folders a visitor may read (the drift section's folder of
    GeoTIFFs); with none, only the demo data is read."""
    picker = ScenePicker()
    scene_view = SceneView(scene=picker.scene, aoi=picker.aoi, title=picker.title)
    inference = InferenceState(cache, scene=picker.scene)

    def follow(*_events) -> None:  # the scene picked drives every section
        scene_view.param.update(scene=picker.scene, aoi=picker.aoi, title=picker.title)
        inference.scene = picker.scene

    picker.param.watch(follow, ["scene", "aoi", "title"])
    sidebar = pn.Column(
        pn.pane.Markdown(f"**Pipeline:** {PIPELINE}"), picker, sizing_mode="stretch_width"
    )
    drift = DriftSeries(data_roots=list(data_roots))
    tabs = pn.Tabs(
        ("Scene", scene_view),
        ("Predict & optimise", InferenceView(state=inference)),
        ("Monitor drift", DriftView(state=drift)),
        dynamic=True,
        sizing_mode="stretch_width",
    )
    return Sections(sidebar, tabs, picker, scene_view, inference, drift)


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
    """The same dashboard for a notebook cell: sidebar beside the sections."""
    sections = create_sections(cache, data_roots)
    return pn.Row(
        pn.Column(sections.sidebar, width=300), sections.tabs, sizing_mode="stretch_width"
    )
