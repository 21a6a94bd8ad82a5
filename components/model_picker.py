"""Which model the page uses, among those the server was started with, and what it is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import panel as pn
import param

from seamline.core.errors import SeamlineError
from seamline.core.models.modelio import SegmentationModel
from seamline.core.serve.cache import ModelCache

__all__ = ["ModelPicker", "model_label"]


def model_label(spec: str) -> str:
    """How a model is named in the page: a file by its name, a built-in model by its own."""
    return Path(spec).name if Path(spec).suffix else spec


def model_geometry(model: SegmentationModel) -> dict[str, str]:
    """Stride, receptive field, fixed tile and adapted output, as a person reads them: what
    the sidecar states, or what Seamline measured on load (seamline.core.models.geometry)."""
    measured = model.metadata.get("geometry")
    source = " (measured)" if measured else ""
    radius = model.receptive_radius
    if radius is not None:
        field = f"± {radius} px{source}"
    elif measured and measured["non_local"]:
        field = f"the whole tile ({measured['non_local'][0].split(' (')[-1].rstrip(')')})"
    else:
        field = "not stated"
    rows = {"Stride": f"{model.align} px{source}", "Receptive field": field}
    if model.metadata.get("tile_size"):
        rows["Tile"] = f"{model.metadata['tile_size']} px (fixed at export)"
    if model.metadata.get("adapted_output"):
        rows["Output"] = model.metadata["adapted_output"]
    return rows


class ModelPicker(pn.viewable.Viewer):
    """A choice of model (shown when there are several) and a card naming its bands, classes,
    stride and receptive field; ``model`` is the chosen spec the sections predict with."""

    model = param.Selector(objects=[], label="Model", doc="The spec of the chosen model.")

    def __init__(self, cache: ModelCache, models: Sequence[str], **params) -> None:
        if not models:
            raise ValueError("ModelPicker needs at least one model")
        super().__init__(**params)
        self.cache = cache  # process-wide on purpose: the server loaded these at start
        self.param.model.objects = {model_label(m): m for m in models}
        self.model = self.model if self.model in models else models[0]

    @param.depends("model")
    def describe(self) -> dict[str, str]:
        """Name, bands, classes and tiling geometry of the chosen model."""
        try:
            model = self.cache.get(self.model, precision=None)
        except SeamlineError as exc:
            return {"Model": model_label(self.model), "Error": str(exc)}
        return {
            "Model": model.name,
            "Bands": f"{len(model.bands)}: {', '.join(model.bands)}",
            "Classes": f"{len(model.classes)}: {', '.join(model.classes)}",
            **model_geometry(model),
        }

    @param.depends("model")
    def _card(self) -> pn.pane.Markdown:
        return pn.pane.Markdown(
            "\n".join(f"- **{k}**: {v}" for k, v in self.describe().items()),
            sizing_mode="stretch_width",
        )

    def __panel__(self) -> pn.viewable.Viewable:
        """The choice (when there is one) above the model's card."""
        several = len(self.param.model.objects) > 1
        choice = [pn.widgets.Select.from_param(self.param.model)] if several else []
        return pn.Column(*choice, self._card, sizing_mode="stretch_width")
