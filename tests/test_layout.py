"""The dashboard's composition: the scene picked drives every section."""

import panel as pn

from seamline.app.layout import create_app, create_inline, create_sections
from seamline.core.demo.synthetic import make_scene
from seamline.core.serve.cache import ModelCache
from tests.conftest import foreign_model


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


def test_a_model_that_is_not_ours_drives_every_section(tmp_path):
    path = str(foreign_model(tmp_path))
    sections = create_sections(ModelCache(), models=[path, "demo"])
    chooser, inference, drift = sections.models, sections.inference, sections.drift
    assert chooser.model == inference.model == drift.model == path  # the first is chosen
    card = chooser.describe()
    assert card["Model"] == "field_net" and card["Classes"] == "3: water, field, town"
    assert card["Receptive field"] == "± 3 px" and card["Bands"].startswith("6: blue")
    sections.picker.param.update(source="Synthetic", synthetic_size=256)
    result = inference.run()
    assert result.classes.attrs["classes"] == ["water", "field", "town"]
    chooser.model = "demo"  # the picker moves every section, and old runs are not reused
    assert inference.model == drift.model == "demo" and inference.result is None
    assert chooser.describe()["Classes"].startswith("5: water, vegetation")


def test_a_scene_the_model_cannot_read_is_one_sentence(tmp_path):
    sections = create_sections(ModelCache(), models=["demo"])
    scene = make_scene(64, 64)[0].isel(band=[0, 1, 2])  # blue, green, red only
    sections.inference.scene = scene
    sections.inference.run()
    message = sections.inference.message
    assert "['blue', 'green', 'red']" in message and "'nir'" in message and "\n" not in message
    assert sections.inference.result is None and not sections.inference.running


def test_a_big_synthetic_scene_is_made_off_the_event_loop():
    import asyncio

    import param

    from seamline.components.scene_picker import ScenePicker

    picker = ScenePicker()
    picker.param.update(source="Synthetic", synthetic_size=256)
    ticks = []

    async def main() -> None:
        async def ticker() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(ticker())
        with param.parameterized.discard_events(picker):  # load by hand, as the watcher does
            picker.synthetic_size = 2048
        await picker._load_builtin()
        task.cancel()

    asyncio.run(main())
    assert picker.scene.shape == (6, 2048, 2048)
    assert len(ticks) > 3  # the loop kept serving while the scene was made


def test_the_model_card_says_what_was_measured_and_adapted(tmp_path):
    import json

    from seamline.components.model_picker import model_geometry
    from seamline.core.models.modelio import load_model

    path = foreign_model(tmp_path)  # a .pt2 with dynamic H/W whose sidecar states nothing
    path.with_suffix(".json").write_text(json.dumps({"bands": list("abcdef")}))
    card = model_geometry(load_model(path))
    assert card == {"Stride": "1 px (measured)", "Receptive field": "± 3 px (measured)"}
    assert model_geometry(load_model("demo")) == {"Stride": "4 px", "Receptive field": "± 23 px"}
