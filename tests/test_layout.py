"""The dashboard's composition: the scene picked drives every section."""

import panel as pn

from seamline.app.layout import create_app, create_inline, create_sections
from seamline.core.serve.cache import ModelCache


def test_picking_a_scene_updates_every_section():
    sections = create_sections(ModelCache())
    picker, scene_view, inference = sections.picker, sections.scene_view, sections.inference
    picker.param.update(source="Synthetic", synthetic_size=256)
    assert scene_view.scene is picker.scene is inference.scene
    assert scene_view.scene.shape == (6, 256, 256) and scene_view.aoi is None
    assert "256 x 256" in scene_view.title


def test_each_session_gets_its_own_objects():
    a, b = create_sections(ModelCache()), create_sections(ModelCache())
    assert a.picker is not b.picker and a.inference is not b.inference and a.drift is not b.drift
    assert isinstance(create_app(), pn.template.BaseTemplate)
    assert create_inline().get_root() is not None


def test_the_data_roots_reach_the_drift_section(tmp_path):
    assert create_sections(ModelCache(), [tmp_path]).drift.data_roots == [tmp_path]
    assert create_sections(ModelCache()).drift.data_roots == []  # default: no server folder
