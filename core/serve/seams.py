"""The seam story of a scene: tiles without overlap against the chosen tiling, both judged
against the untiled run of the same model, and a window on a tile corner to look at.

Cutting a raster into tiles without overlap changes the model's input at every tile edge
(the receptive field reaches past it), so classes flip along the grid; overlapping tiles,
cropped or blended, remove that. :func:`seam_report` measures both on the scene in front of
the person, in plain figures (:meth:`SeamReport.sentence`). No UI here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import xarray as xr

from seamline.core.data.io import valid_mask
from seamline.core.predict.blocks import as_prediction, class_ids, model_input, to_output
from seamline.core.predict.tiling import predict_tiled, untiled
from seamline.core.serve.cache import ModelCache
from seamline.core.serve.runs import UNTILED_MAX_PIXELS, RunSettings

__all__ = ["SeamReport", "away_from_edge", "seam_report", "NAIVE"]

NAIVE = {"overlap": 0, "blend": "crop"}
"""The seam-prone tiling the chosen one is set against: tiles side by side, no overlap."""


@dataclass(frozen=True)
class SeamReport:
    """Class maps of the naive and the chosen tiling (and the untiled run when the scene is
    small enough), the share of pixels whose class differs from the untiled run, the largest
    class-probability difference to it, and a zoom window ``(x0, x1, y0, y1)`` in the scene's
    CRS centred on an inner tile corner of the naive grid."""

    naive: xr.DataArray
    chosen: xr.DataArray
    settings: RunSettings
    window: tuple[float, float, float, float]
    naive_changed: float | None = None
    chosen_changed: float | None = None
    naive_max_difference: float | None = None
    chosen_max_difference: float | None = None
    tilings_differ: float = 0.0

    def sentence(self) -> str:
        """The finding in plain words, for a person who has never heard of receptive fields."""
        chosen = f"{self.settings.blend} over {self.settings.overlap} px of overlap"
        if self.naive_changed is None:
            return (
                f"Tiles without overlap and {chosen} disagree on {self.tilings_differ:.2%} of "
                f"pixels (the scene is too large for an untiled reference run)."
            )
        return (
            f"Tiles without overlap give {self.naive_changed:.2%} of pixels another class than "
            f"running the whole scene at once, along the tile edges (away from the scene's "
            f"edge, where any tiling pads it differently; largest probability "
            f"difference {self.naive_max_difference:.2f}); with {chosen}, "
            f"{self.chosen_changed:.2%} (largest difference {self.chosen_max_difference:.4f})."
        )


def _window(scene: xr.DataArray, tile: int) -> tuple[float, float, float, float]:
    """A square of about one tile around the first inner tile corner (the scene's centre
    when it is smaller than two tiles)."""
    height, width = scene.sizes["y"], scene.sizes["x"]
    row = tile if height > tile else height // 2
    col = tile if width > tile else width // 2
    half = max(16, tile // 2)
    r0, r1 = max(0, row - half), min(height, row + half)
    c0, c1 = max(0, col - half), min(width, col + half)
    transform = scene.rio.transform()
    (x0, y0), (x1, y1) = transform * (c0, r0), transform * (c1, r1)
    return min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)


def away_from_edge(shape: tuple[int, int], radius: int) -> np.ndarray:
    """Pixels farther than ``radius`` from the raster's edge. Nearer, an output sees the
    edge's padding, which differs between any tiling (the scene reflected to whole tiles)
    and one untiled run (the model's own padding): on the 300 x 200 demo scene at 256 px
    tiles that edge alone differed by 0.17 in probability, with or without overlap, and hid
    the seams the report is about."""
    inner = np.zeros(shape, dtype=bool)
    height, width = shape
    inner[radius : max(radius, height - radius), radius : max(radius, width - radius)] = True
    return inner


def seam_report(
    scene: xr.DataArray, settings: RunSettings, cache: ModelCache, *, model: str
) -> SeamReport:
    """Predict ``scene`` (at FP32, or a quantized model's own precision) with the naive
    tiling (:data:`NAIVE`), with ``settings``, and, up to
    :data:`~seamline.core.serve.runs.UNTILED_MAX_PIXELS`, untiled; compare them on the valid
    pixels :func:`away_from_edge` by the model's receptive radius."""
    fp32 = cache.get(model, precision=None, device=settings.device)
    x = model_input(fp32, scene)
    valid = valid_mask(scene)
    logits = {
        name: predict_tiled(fp32.module, x, align=fp32.align, **tiling.tiling())
        for name, tiling in (("naive", replace(settings, **NAIVE)), ("chosen", settings))
    }
    ids = {name: to_output(scores, valid, probabilities=False) for name, scores in logits.items()}
    figures: dict[str, float] = {
        "tilings_differ": float((ids["naive"] != ids["chosen"])[valid].mean())
    }
    if scene.sizes["y"] * scene.sizes["x"] <= UNTILED_MAX_PIXELS:
        whole = untiled(fp32.module, x, device=settings.device)
        reference_ids = class_ids(whole)
        reference = torch.softmax(torch.from_numpy(whole), 0)
        judged = valid & away_from_edge(valid.shape, fp32.receptive_radius or 0)
        if not judged.any():  # a scene within the radius of its edges everywhere
            judged = valid
        for name, scores in logits.items():
            probs = torch.softmax(torch.from_numpy(scores), 0)
            figures[f"{name}_changed"] = float((ids[name] != reference_ids)[judged].mean())
            figures[f"{name}_max_difference"] = float(
                (probs - reference).abs().amax(0).numpy()[judged].max()
            )
    naive, chosen = (as_prediction(ids[name], scene, fp32) for name in ("naive", "chosen"))
    return SeamReport(naive, chosen, settings,
                      _window(scene, settings.tile_size), **figures)  # fmt: skip
