"""Composition of the dashboard: one factory, called once per browser session."""

from __future__ import annotations

import panel as pn

from components.scene_view import SceneView
from core.demo import sentinel2_aoi, sentinel2_sample

PIPELINE = "prepare → predict → optimise → serve → monitor"


def create_app() -> pn.template.BaseTemplate:
    """Build a fresh dashboard; every session gets its own objects (no shared mutable state)."""
    scene_view = SceneView(
        scene=sentinel2_sample(), aoi=sentinel2_aoi(), title="Sentinel-2 demo scene (EPSG:32719)"
    )
    template = pn.template.BootstrapTemplate(
        title="Seamline",
        header_background="#1f4e5f",
    )
    template.main.append(
        pn.Column(
            pn.pane.Markdown(
                f"**Pipeline:** {PIPELINE}. The scene is shown in its own projected CRS; "
                "the AOI (given in EPSG:4326) is reprojected onto it."
            ),
            scene_view,
            sizing_mode="stretch_both",
        )
    )
    return template
