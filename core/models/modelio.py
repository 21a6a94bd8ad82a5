"""Segmentation models with what travels with them: bands, classes, colours, band statistics.

A model on disk is a weights file plus a JSON sidecar of the same stem::

    model.pt    state dict (with "model_class": "package.module:Class" in the JSON), or
    model.pt2   a ``torch.export`` archive (no Python class needed)
    model.json  {"name", "bands", "classes", "colors", "stats", "align", "receptive_radius",
                 "model_class", "init", ...}

``load_model("demo")`` gives the shipped demo U-Net; it loads offline from the package.

Loading a model file runs no code from it unless ``trust_model=True`` (``--trust-model``):
state dicts and checkpoints load with ``torch.load(weights_only=True)``, ``.pt2`` archives
with every pickled payload forced to ``weights_only`` and without compiled (AOTInductor) code
or Python objects, and a class is imported only from Seamline's own :mod:`seamline.core.demo.unet`.
A pickled full model (``torch.save(model)``) or another import path needs the flag, since
unpickling or importing it runs arbitrary code.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock

import torch
import xarray as xr
from torch import nn

from seamline.core.data.files import atomic_path, first_line
from seamline.core.errors import (
    InputFileError,
    InvalidArgumentError,
    SeamlineError,
    UntrustedModelError,
)
from seamline.core.models.geometry import cached_geometry
from seamline.core.models.onnx import OnnxModule
from seamline.core.models.outputs import (
    DenseLogits,
    OutputLayoutError,
    dense_logits,
    exported_tile,
)
from seamline.core.models.registry import TORCH_PRECISIONS, builtin_model_path
from seamline.core.prepare.bandstats import BandStats, band_order

__all__ = [
    "SegmentationModel",
    "load_model",
    "save_model",
    "check_bands",
    "with_precision",
    "check_precision_device",
    "eval_mode",
]

TRUSTED_CLASS_MODULES = ("seamline.core.demo.unet",)
"""Modules whose classes a sidecar may name without ``trust_model``: Seamline's own."""
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
"""Where a training checkpoint (a dict) keeps the model's state dict."""
_LOADING = threading.Lock()
"""Held while a load sets or needs torch's process-wide TORCH_FORCE_WEIGHTS_ONLY_LOAD."""


@dataclass(frozen=True)
class SegmentationModel:
    """A model and its metadata. ``module`` maps ``(B, bands, t, t)`` to ``(B, classes, t, t)``."""

    module: nn.Module
    bands: tuple[str, ...]
    classes: tuple[str, ...]
    colors: tuple[str, ...] = ()
    stats: BandStats | None = None
    align: int = 1
    receptive_radius: int | None = None
    name: str = "model"
    precision: str = "fp32"
    metadata: dict = field(default_factory=dict, compare=False)

    def with_module(self, module: nn.Module, *, precision: str) -> SegmentationModel:
        """The same model metadata around another module (e.g. a quantized one)."""
        return replace(self, module=module, precision=precision)

    def sidecar(self) -> dict:
        """The JSON sidecar describing this model."""
        return {
            **self.metadata,
            "name": self.name,
            "bands": list(self.bands),
            "classes": list(self.classes),
            "colors": list(self.colors),
            "stats": self.stats.to_dict() if self.stats else None,
            "align": self.align,
            "receptive_radius": self.receptive_radius,
            "precision": self.precision,
        }


def eval_mode(module: torch.nn.Module) -> torch.nn.Module:
    """``module.eval()``; a ``torch.export`` module is fixed at export time and refuses it."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def _untrusted(path: Path, what: str) -> UntrustedModelError:
    return UntrustedModelError(
        f"Model file {str(path)!r} {what}, and loading it runs arbitrary code: pass "
        "--trust-model (trust_model=True) only if you trust its source."
    )


def _import_class(path: str, *, trust_model: bool) -> type[nn.Module]:
    """The ``nn.Module`` class at ``package.module:Class``; importing runs the module's code,
    so only :data:`TRUSTED_CLASS_MODULES` are imported without ``trust_model``."""
    module_name, _, class_name = path.partition(":")
    if module_name not in TRUSTED_CLASS_MODULES and not trust_model:
        raise UntrustedModelError(
            f"Model class {path!r} is not one of Seamline's own "
            f"({', '.join(TRUSTED_CLASS_MODULES)}), and importing "
            "it runs its code: pass --trust-model (trust_model=True) only if you trust it."
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise InputFileError(
            f"Model class {path!r} cannot be imported: give it as 'package.module:ClassName'."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputFileError(f"Model class {path!r} is not a torch.nn.Module class: name one.")
    return cls


def _unsafe_pt2() -> tuple[str, ...]:
    """Members of a ``.pt2`` archive that run code on load. Imported here, not at the top:
    ``torch.export`` pulls in dynamo and sympy (1.2 s of every command's start)."""
    from torch.export.pt2_archive import constants as pt2

    return (
        pt2.AOTINDUCTOR_DIR,  # a compiled shared library
        pt2.CONSTANTS_DIR + pt2.CUSTOM_OBJ_FILENAME_PREFIX,  # TorchBind objects
        # read with a plain pickle.loads; torch < 2.12 has no such entries (nor the constant)
        pt2.CONSTANTS_DIR + getattr(pt2, "OPAQUE_OBJ_FILENAME_PREFIX", "opaque_obj_"),
    )


def _load_pt2(path: Path, *, trust_model: bool) -> nn.Module:
    """A ``torch.export`` archive; untrusted, it may hold nothing that runs code on load."""
    if trust_model:
        return torch.export.load(str(path)).module()
    with zipfile.ZipFile(path) as archive:  # members sit under one root folder
        unsafe = [n for n in archive.namelist() if n.partition("/")[2].startswith(_unsafe_pt2())]
    if unsafe:
        raise _untrusted(path, f"holds compiled code or Python objects ({unsafe[0]})")
    # torch.export.load unpickles tensors and sample inputs with weights_only=False (and
    # falls back to it): the variable makes every torch.load in it weights_only.
    with _LOADING, mock.patch.dict(os.environ, {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}):
        try:
            return torch.export.load(str(path)).module()
        except pickle.UnpicklingError:
            raise _untrusted(path, "holds pickled Python objects beyond tensors") from None


def _load_pt(path: Path, meta: dict, *, model_class: str | None, trust_model: bool) -> nn.Module:
    """A state dict or checkpoint (+ its class), or, trusted, a pickled full model."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_model:
            raise _untrusted(
                path, "is not a plain state dict but pickled Python objects (a full model "
                "saved with torch.save(model)?)"
            ) from None
        with _LOADING:
            state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        return state
    if not isinstance(state, dict):
        raise InputFileError(
            f"Model file {str(path)!r} holds a {type(state).__name__}, not a model, state dict "
            "or checkpoint: save model.state_dict()."
        )
    state = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state.get(k), dict)), state)
    cls_path = model_class or meta.get("model_class")
    if cls_path is None:
        raise InputFileError(
            f"Model file {str(path)!r} is a state dict without a class: pass "
            "--model-class package.module:ClassName or add \"model_class\" to "
            f"{path.with_suffix('.json').name}."
        )
    module = _import_class(cls_path, trust_model=trust_model)(**meta.get("init", {}))
    module.load_state_dict(state)
    return module


def _first_conv_in_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _from_module(
    module: nn.Module, meta: dict, *, source: Path | None = None
) -> SegmentationModel:
    module = eval_mode(module)
    bands = meta.get("bands")
    if bands is None:
        count = meta.get("band_count") or _first_conv_in_channels(module)
        if count is None:
            raise InputFileError(
                "Cannot tell how many bands the model expects: add \"bands\" to its JSON sidecar."
            )
        bands = [f"band_{i + 1}" for i in range(count)]
    stats = _stats(meta, source)
    module, meta = _as_dense_logits(module, meta, len(bands))
    count = meta.get("class_count") or meta.get("probed_classes", 0)
    classes = meta.get("classes") or [f"class_{i}" for i in range(count)]
    if meta.get("probed_classes") and len(classes) != meta["probed_classes"]:
        raise InputFileError(  # else class ids past the names were written unnamed
            f"Model {meta.get('name', 'model')!r} outputs {meta['probed_classes']} classes but "
            f"{len(classes)} class names were given ({', '.join(map(str, classes))}): name "
            "each output class once in its sidecar's \"classes\" (classes= in Python)."
        )
    radius = meta.get("receptive_radius")
    if radius is None:
        meta = _with_geometry(module, meta, len(bands), source)
    elif isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise InputFileError(  # else a bad overlap, naming neither the model nor the field
            f"Model {meta.get('name', 'model')!r} gives \"receptive_radius\": {radius!r}: "
            "give the pixels its output reaches out on each side (an integer >= 0), or leave "
            "it out to have it measured."
        )
    known = {"name", "bands", "classes", "colors", "stats", "align", "receptive_radius",
             "precision", "probed_classes"}
    return SegmentationModel(
        module=module,
        bands=tuple(bands),
        classes=tuple(classes),
        colors=tuple(meta.get("colors") or ()),
        stats=stats,
        align=int(meta.get("align") or getattr(module, "align", 1)),
        receptive_radius=meta.get("receptive_radius"),
        name=meta.get("name", "model"),
        precision=meta.get("precision", "fp32"),
        metadata={k: v for k, v in meta.items() if k not in known},
    )


def _stats(meta: dict, source: Path | None) -> BandStats | None:
    """The sidecar's band statistics; one sentence naming it when they are malformed."""
    if not meta.get("stats"):
        return None
    try:
        return BandStats.from_dict(meta["stats"])
    except (ValueError, TypeError, AttributeError) as exc:  # e.g. a string, a missing field
        where = (f"Model sidecar {str(source.with_suffix('.json'))!r}" if source
                 else f"The metadata of model {meta.get('name', 'model')!r}")  # fmt: skip
        raise InputFileError(
            f"{where} has malformed \"stats\" ({first_line(exc)}): write them as `seamline "
            "prepare --fit-stats` saves them, or remove them."
        ) from None


_PROBE_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, IndexError)
"""What a model that cannot run a probe tile raises (torch.export guards assert)."""


def _as_dense_logits(module: nn.Module, meta: dict, bands: int) -> tuple[nn.Module, dict]:
    """The module as one logits tensor at full resolution (seamline.core.models.outputs),
    and ``meta`` with what was adapted; a ``torch.export`` module with static height and
    width records that tile size. A model that cannot run the probe tile is used as it is."""
    tile = exported_tile(module)
    found = {"tile_size": tile} if tile else {}
    try:
        module, adapted, count = dense_logits(module, bands, tile=tile, key=meta.get("output"))
        found["probed_classes"] = count
    except OutputLayoutError as exc:
        raise InputFileError(
            f"Model {meta.get('name', 'model')!r} cannot be used: {exc}."
        ) from None
    except _PROBE_ERRORS:
        adapted = ""
    if adapted:
        found["adapted_output"] = adapted
    return module, {**meta, **found}


def _with_geometry(module, meta: dict, bands: int, source: Path | None) -> dict:
    """``meta`` completed with the model's measured geometry (receptive field, alignment,
    non-local layers; seamline.core.models.geometry), cached by the bytes of the ``source``
    file (else the weights), unless the model cannot run the probe tile."""
    content = source.read_bytes() if source is not None else None
    probe = meta.get("tile_size") or 256
    try:
        geometry = cached_geometry(module, bands, source=content, probe=probe)
    except _PROBE_ERRORS:
        return meta
    measured = {"geometry": geometry.to_dict()}
    if geometry.bounded:
        measured["receptive_radius"] = geometry.receptive_radius
    if meta.get("align") is None and getattr(module, "align", None) is None:
        measured["align"] = geometry.align or 1
    return {**meta, **measured}


def _sidecar(path: Path) -> dict:
    """The model's JSON sidecar (empty when there is none); one sentence when it is broken."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(
            f"Model sidecar {str(path)!r} is not valid JSON ({first_line(exc)}): fix it, or "
            "remove it to use the model without one."
        ) from None
    if not isinstance(meta, dict):
        raise InputFileError(
            f"Model sidecar {str(path)!r} holds a JSON {type(meta).__name__}, not an object: "
            'write {"bands": [...], "classes": [...], ...}.'
        )
    return meta


def load_model(
    spec: str | os.PathLike | nn.Module | SegmentationModel,
    *,
    model_class: str | None = None,
    trust_model: bool = False,
    bands: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> SegmentationModel:
    """Load a model: ``"demo"``, a ``.pt`` state dict (+ class), a ``.pt2`` archive, or a module.

    ``bands`` and ``classes`` name the model's input bands and output classes (they override
    the sidecar's; a bare module has no sidecar, and its bands are otherwise ``band_1..N``).
    ``model_class`` (``"package.module:Class"``) overrides the sidecar's for a state dict.
    ``trust_model`` allows what runs code from the file: a pickled full model, a class outside
    :mod:`seamline.core.demo.unet`, a ``.pt2`` archive with pickled objects or compiled code.
    Without it those raise :class:`~core.errors.UntrustedModelError`, before any of their code runs.
    """
    if isinstance(spec, SegmentationModel):
        return spec
    named = {k: list(v) for k, v in (("bands", bands), ("classes", classes)) if v is not None}
    if isinstance(spec, nn.Module):
        return _from_module(spec, named)
    path = builtin_model_path(str(spec)) or Path(spec)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputFileError(
            f"Model file {str(path)!r} {what}: pass 'demo', a .pt state dict with its "
            ".json sidecar, a torch.export .pt2 archive or a quantized .onnx model."
        )
    sidecar = path.with_suffix(".json")
    meta = _sidecar(sidecar) | named
    try:
        if path.suffix == ".pt2":
            module = _load_pt2(path, trust_model=trust_model)
        elif path.suffix == ".onnx":  # e.g. INT8, saved by seamline.core.optimise.quantize
            module = OnnxModule(path.read_bytes(), align=int(meta.get("align") or 1))
        else:
            module = _load_pt(path, meta, model_class=model_class, trust_model=trust_model)
    except SeamlineError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AssertionError,
            pickle.UnpicklingError, zipfile.BadZipFile) as exc:  # torch's readers assert too
        raise InputFileError(
            f"Model file {str(path)!r} could not be loaded ({str(exc).splitlines()[0]}): "
            "check that it matches its class and sidecar."
        ) from None
    meta.setdefault("name", str(spec) if builtin_model_path(str(spec)) else path.stem)
    return _from_module(module, meta, source=path)


def save_model(model: SegmentationModel, path: str | os.PathLike, *, model_class: str) -> Path:
    """Save a state dict and its JSON sidecar (atomically, sidecar last)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        inner = model.module.module if isinstance(model.module, DenseLogits) else model.module
        torch.save(inner.state_dict(), tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({**model.sidecar(), "model_class": model_class}, indent=2))
    return path


def check_bands(model: SegmentationModel, scene: xr.DataArray) -> list[int]:
    """Indices of the model's bands in the scene; one sentence, before any work, if missing."""
    return band_order(scene, model.bands, by=f"model {model.name!r}")


class _Autocast(nn.Module):
    """Runs the wrapped module under ``torch.autocast`` (BF16 or FP16 matmuls and
    convolutions)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype
        self.align = getattr(module, "align", 1)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped forward under autocast; the output comes back as float32."""
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.module(x).float()


def check_precision_device(precision: str, device: torch.device | str) -> None:
    """One sentence, before any work, when ``precision`` cannot run well on ``device``:
    FP16 autocast is for CUDA GPUs (a CPU emulates it, slower than FP32)."""
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise InvalidArgumentError(
            f"FP16 runs on a CUDA GPU and this run is on {torch.device(device).type}: use "
            "--device cuda, or --precision bf16 / int8 / auto on a CPU."
        )


def with_precision(model: SegmentationModel, precision: str) -> SegmentationModel:
    """The model at ``fp32``, ``bf16`` or ``fp16`` (autocast; FP16 is for CUDA GPUs)."""
    if precision not in TORCH_PRECISIONS:
        raise InvalidArgumentError(
            f"precision must be one of {', '.join(TORCH_PRECISIONS)}, got {precision!r}"
        )
    if precision == model.precision:
        return model
    if model.precision != "fp32":  # a quantized .onnx (or autocast already): no FP32 weights
        raise InvalidArgumentError(  # to convert; autocast over INT8 ran INT8, labelled bf16
            f"Model {model.name!r} is {model.precision.upper()}: pass its FP32 model to run it "
            f"at {precision}."
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return model.with_module(_Autocast(model.module, dtype), precision=precision)
