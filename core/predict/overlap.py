"""How much neighbouring tiles overlap: chosen from the model's receptive field so that
tiling is exact, and a warning when an explicit overlap cannot be (docs/architecture.md).

With ``crop`` each tile keeps its centre and discards ``overlap / 2`` px on each side; the
weighted blends give the outer quarter of the overlap zero weight (tiling.py ``_ramp``). A
tiled output equals the untiled one when what is kept never saw the tile's zero padding: the
overlap must be ``2 r`` for ``crop`` and ``4 r`` for the weighted blends, ``r`` being the
receptive radius (stated by the model's sidecar, or measured: seamline.core.models.geometry).
"""

from __future__ import annotations

import math
import warnings

from seamline.core.errors import SeamlineWarning
from seamline.core.models.modelio import SegmentationModel
from seamline.core.predict.tiling import Blend

__all__ = [
    "UNKNOWN_FIELD_OVERLAP", "SeamWarning", "choose_overlap", "covering_overlap", "plan_overlap",
]  # fmt: skip

UNKNOWN_FIELD_OVERLAP = 64
"""The overlap used when a model's receptive field is unknown (not stated, not measurable)."""


class SeamWarning(SeamlineWarning):
    """The tiles' overlap does not cover the model's receptive field: expect seams."""


def covering_overlap(radius: int, blend: str | Blend, align: int = 1) -> int:
    """The smallest overlap (a multiple of ``align``) that makes tiling exact for a
    receptive radius of ``radius`` px with ``blend``."""
    factor = 2 if Blend.parse(blend) is Blend.CROP else 4
    return math.ceil(factor * radius / align) * align


def plan_overlap(
    model: SegmentationModel, tile_size: int, blend: str | Blend, overlap: int | None = None
) -> tuple[int, list[str]]:
    """The overlap to use (``overlap`` if given, else the one that covers ``model``'s
    receptive field, at most half a tile) and, as sentences, why tiles may still show seams:
    the overlap does not cover the field, or the model has layers that see the whole tile."""
    problems = []
    non_local = (model.metadata.get("geometry") or {}).get("non_local")
    if non_local:
        problems.append(
            f"Model {model.name!r} has layers that see the whole tile ({', '.join(non_local)}): "
            "tiles differ from an untiled run whatever the overlap; larger tiles reduce it."
        )
    radius = model.receptive_radius
    if radius is None:
        return (UNKNOWN_FIELD_OVERLAP if overlap is None else overlap), problems
    needed = covering_overlap(radius, blend, model.align)
    largest = tile_size // 2 // model.align * model.align
    chosen = min(needed, largest) if overlap is None else overlap
    if chosen < needed:
        problems.append(
            f"An overlap of {chosen} px does not cover model {model.name!r}'s receptive radius "
            f"of {radius} px with the {Blend.parse(blend)} blend (that needs {needed} px): expect "
            f"seams; use an overlap of {needed} or more"
            + (f" with a tile size of at least {2 * needed}." if needed > largest else ".")
        )
    return chosen, problems


def choose_overlap(
    model: SegmentationModel, tile_size: int, blend: str | Blend, overlap: int | None = None
) -> int:
    """:func:`plan_overlap`'s overlap; its reasons for seams are :class:`SeamWarning`\ s."""
    chosen, problems = plan_overlap(model, tile_size, blend, overlap)
    for problem in problems:
        warnings.warn(problem, SeamWarning, stacklevel=3)
    return chosen
