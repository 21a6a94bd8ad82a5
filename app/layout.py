"""Composition of the dashboard: one factory, called once per browser session."""

from __future__ import annotations

import panel as pn

from components.drift_view import DriftSeries, DriftView
from components.inference_view import InferenceState, InferenceView
from components.scene_picker import ScenePicker
from components.scene_view import SceneView
from core.latency import ModelCache

PIPELINE = "prepare → predict → optimise → serve → monitor"
MODELS = ModelCache()  # shared on purpose: every session reuses the warm, quantized models


def create_app(cache: ModelCache = MODELS) -> pn.template.BaseTemplate:
    """Build a fresh dashboard; every session gets its own objects (no shared mutable state
    besides the model cache)."""
    picker = ScenePicker()
    scene_view = SceneView(scene=picker.scene, aoi=picker.aoi, title=picker.title)
    inference = InferenceState(cache, scene=picker.scene)

    def follow(event) -> None:  # the scene picked drives every section
        scene_view.param.update(scene=picker.scene, aoi=picker.aoi, title=picker.title)
        inference.scene = picker.scene

    picker.param.watch(follow, ["scene", "aoi", "title"])
    template = pn.template.BootstrapTemplate(
        title="Seamline", header_background="#1f4e5f", sidebar_width=330
    )
    template.sidebar.append(
        pn.Column(
            pn.pane.Markdown(f"**Pipeline:** {PIPELINE}"),
            picker,
            sizing_mode="stretch_width",
        )
    )
    template.main.append(
        pn.Tabs(
            ("Scene", scene_view),
            ("Predict & optimise", InferenceView(state=inference)),
            ("Monitor drift", DriftView(state=DriftSeries())),
            dynamic=True,
            sizing_mode="stretch_width",
        )
    )
    return template
