"""How a scene is cut into tiles for a model: the tile size (a ``torch.export`` model
exported for one size runs at that size) and the overlap, chosen from the model's receptive
field so that tiling is exact, with a warning when an explicit one cannot be
(docs/architecture.md).

With ``crop`` each tile keeps its centre and discards ``overlap / 2`` px on each side; the
weighted blends give the outer quarter of the overlap zero weight (tiling.py ``_ramp``). A
tiled output equals the untiled one when what is kept never saw the tile's zero padding: the
overlap must be ``2 r`` for ``crop`` and ``4 r`` for the weighted blends, ``r`` being the
receptive radius (stated by the model's sidecar, or measured: seamline.core.models.geometry).
"""

from __future__ import annotations

import json
import math
import warnings
import weakref

import numpy as np
import torch

from seamline.core.diskcache import digest, model_fingerprint, read_json_entry, write_entry
from seamline.core.errors import InvalidArgumentError, SeamlineWarning
from seamline.core.models.modelio import SegmentationModel
from seamline.core.predict.tiling import Blend, predict_tiled, untiled

__all__ = [
    "DEFAULT_TILE_SIZE", "UNKNOWN_FIELD_OVERLAP", "SeamWarning", "choose_overlap",
    "choose_tile_size", "covering_overlap", "plan_overlap",
]  # fmt: skip

DEFAULT_TILE_SIZE = 512
"""The tile side of a model that accepts any (a multiple of its stride)."""

UNKNOWN_FIELD_OVERLAP = 64
"""The overlap used when a model's receptive field is unknown (not stated, not measurable)."""


_SEAM_ERRORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Seam errors measured so far, per module (forgotten with it) and tiling."""


class SeamWarning(SeamlineWarning):
    """The tiles' overlap does not cover the model's receptive field: expect seams."""


def choose_tile_size(model: SegmentationModel, tile_size: int | None = None) -> int:
    """``tile_size`` if given, else the model's fixed tile (a ``torch.export`` archive with
    static height and width) or :data:`DEFAULT_TILE_SIZE`; a size the model cannot take is
    one sentence naming the size it was exported for."""
    fixed = model.metadata.get("tile_size")
    if fixed is None:
        return DEFAULT_TILE_SIZE if tile_size is None else tile_size
    if tile_size not in (None, fixed):
        raise InvalidArgumentError(
            f"Model {model.name!r} was exported for {fixed} x {fixed} px tiles (its height and "
            f"width are static): use a tile size of {fixed} (tile_size={fixed}, --tile-size "
            f"{fixed}), or export it with dynamic height and width "
            "(torch.export.export(net, (x,), dynamic_shapes=({0: Dim.DYNAMIC, "
            "2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)))."
        )
    return fixed


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
        more = len(non_local) - 2
        named = ", ".join(non_local[:2]) + (f" and {more} more" if more > 0 else "")
        problems.append(
            f"Model {model.name!r} has layers that see the whole tile ({named}): tiles differ "
            "from an untiled run whatever the overlap; larger tiles reduce it."
        )
    radius = model.receptive_radius
    largest = tile_size // 2 // model.align * model.align
    if radius is None:
        return (min(UNKNOWN_FIELD_OVERLAP, largest) if overlap is None else overlap), problems
    needed = covering_overlap(radius, blend, model.align)
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
    model: SegmentationModel,
    tile_size: int,
    blend: str | Blend,
    overlap: int | None = None,
    *,
    cache: bool = True,
) -> int:
    """:func:`plan_overlap`'s overlap, warning (:class:`SeamWarning`) each reason for seams,
    with the seam error measured on a random probe of four tiles (``cache=False``: not read
    from, nor written to, the disk cache)."""
    chosen, problems = plan_overlap(model, tile_size, blend, overlap)
    if problems:
        error = measured_seam_error(model, tile_size, chosen, blend, cache=cache)
        if error is not None:
            measured = f"class probabilities differ from an untiled run by up to {error:.1e}"
            problems[-1] = f"{problems[-1][:-1]} (measured on a random probe: {measured})."
    for problem in problems:
        warnings.warn(problem, SeamWarning, stacklevel=3)
    return chosen


def measured_seam_error(
    model: SegmentationModel, tile_size: int, overlap: int, blend: str | Blend, *,
    cache: bool = True,
) -> float | None:
    """Largest class-probability difference between this tiling and one untiled pass over a
    random 2 x 2-tile probe (z-scored values, as the model sees them); None when the model
    cannot run the untiled probe (e.g. a fixed tile size). Measured once per module and
    tiling: a service warns on every request with the same options."""
    known = _SEAM_ERRORS.setdefault(model.module, {})
    key = (tile_size, overlap, str(Blend.parse(blend)))
    if key not in known:
        known[key] = _stored_seam_error(model, *key, cache=cache)
    return known[key]


def _stored_seam_error(model: SegmentationModel, tile_size: int, overlap: int,
                       blend: str, *, cache: bool = True) -> float | None:  # fmt: skip
    """:func:`_probe_seam_error`, kept in the disk cache per weights and tiling (the probe
    costs 0.6-1 s of every `seamline predict` that warns). An ONNX Runtime module (INT8, or a
    user's ``.onnx``) is keyed by its graph's bytes; another module without weights of its own
    has no fingerprint to key on: probed each process."""
    module = getattr(model.module, "eager", model.module)
    graph = getattr(module, "onnx_bytes", None)
    if not cache or (graph is None and not any(True for _ in module.parameters())):
        return _probe_seam_error(model, tile_size, overlap, blend)
    key = digest([model_fingerprint(module, graph), str(tile_size), str(overlap), blend,
                  "probe 1"])  # fmt: skip
    stored = read_json_entry("seams", key)
    if isinstance(stored, dict) and "error" in stored:  # else absent or damaged: probed again
        return stored["error"]
    error = _probe_seam_error(model, tile_size, overlap, blend)
    write_entry("seams", key, ".json", json.dumps({"error": error}).encode())
    return error


def _probe_seam_error(
    model: SegmentationModel, tile_size: int, overlap: int, blend: str | Blend
) -> float | None:
    side = 2 * tile_size - overlap
    image = np.random.default_rng(0).standard_normal((len(model.bands), side, side))
    image = image.astype(np.float32)
    module = getattr(model.module, "eager", model.module)  # a compiled one would recompile
    try:
        tiled = predict_tiled(module, image, tile_size=tile_size, overlap=overlap,
                              blend=blend, align=model.align, device="cpu")  # fmt: skip
        whole = untiled(module, image, device="cpu")
    except (RuntimeError, ValueError, AssertionError):
        return None
    probabilities = [torch.from_numpy(x).softmax(0) for x in (tiled, whole)]
    return float((probabilities[0] - probabilities[1]).abs().max())
