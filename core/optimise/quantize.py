"""The ``optimise`` stage: post-training static INT8 quantization with calibration, and BF16.

Backend decision (measured, see ``docs/quantization.md``): INT8 runs on **ONNX Runtime**,
static QDQ quantization with per-channel INT8 weights and UINT8 activations calibrated on
representative tiles. On the two CPU kinds Seamline meets it is the only INT8 path that is
fast on both (seconds per batch of 4 x 256^2, demo U-Net, 2 threads: 0.041 on AVX-512 VNNI
+ AMX, 0.14 on AVX2, vs FP32 eager 0.13 / 0.69); it needs no ``torch.compile`` per process
(the torchao PT2E + inductor path, 0.035 / 0.26, compiles for 7-25 s in every process), its
artifact is a small self-contained ``.onnx`` file, and the legacy ``torch.ao`` FX path is
deprecated. BF16 is ``torch.autocast`` (:func:`seamline.core.models.modelio.with_precision`), native
only with AMX or AVX512-BF16.

A quantized model is a :class:`~core.modelio.SegmentationModel` whose module is an
:class:`OnnxModule`; it plugs into :func:`seamline.core.predict.tiling.predict_tiled` like any
module, and :func:`save_quantized` / :func:`seamline.core.models.modelio.load_model` keep it, so
serving never recalibrates.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from seamline.core.data.files import atomic_path, decoding
from seamline.core.diskcache import (
    digest,
    model_fingerprint,
    read_entry,
    read_json_entry,
    write_entry,
)
from seamline.core.errors import (
    BandMismatchError,
    InvalidArgumentError,
    SeamlineError,
    SeamlineWarning,
)
from seamline.core.hardware import cpu_info
from seamline.core.models.modelio import SegmentationModel, check_bands, eval_mode
from seamline.core.models.onnx import OnnxModule
from seamline.core.optimise.upsample import nearest_resizes_as_gathers
from seamline.core.predict.blocks import model_input

__all__ = [
    "QuantizationWarning",
    "QuantizationError",
    "calibration_tiles",
    "state_dict_bytes",
    "quantize",
    "quantized_before",
    "save_quantized",
    "INT8_OPS",
]

INT8_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm")
"""ONNX Runtime kernels that compute in integers; a quantized graph must contain them."""
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_EXPORT_SIZE = 64  # tile side used to trace the model; H, W and batch stay dynamic
class QuantizationWarning(SeamlineWarning):
    """Part or all of a model stays FP32 because a layer cannot be quantized."""


class QuantizationError(SeamlineError):
    """Quantization cannot run: bad calibration data or a missing backend."""


def _layer_of(exc: BaseException, program: torch.export.ExportedProgram) -> str:
    """The model layer (module path and class) whose operator the ONNX exporter rejected."""
    text = "".join(str(e) for e in (exc, exc.__cause__, getattr(exc.__cause__, "__cause__", None)))
    match = re.search(r"target=torch\.ops\.[\w]+\.(\w+)", text)
    op = match.group(1) if match else None
    if op:
        for node in program.graph.nodes:
            stack = node.meta.get("nn_module_stack")
            if stack and op in str(node.target):
                path, cls = list(stack.values())[-1]
                return f"layer {path!r} ({cls.rsplit('.', 1)[-1]}, operator {op})"
    return f"operator {op}" if op else "an unsupported operator"


def _export_onnx(module: nn.Module, bands: int, align: int, tile: int | None = None) -> bytes:
    """The module as ONNX bytes (BatchNorm folded, dynamic batch/height/width, or batch only
    for a model with a fixed ``tile``); a ``RuntimeError`` naming the layer when an operator
    has no ONNX equivalent."""
    side = tile or max(_EXPORT_SIZE, align * 8)
    example = (torch.zeros(2, bands, side, side),)
    axes = (0,) if tile else (0, 2, 3)
    dynamic = ({i: torch.export.Dim.DYNAMIC for i in axes},)  # positional: any arg name
    module = eval_mode(module.to(memory_format=torch.contiguous_format))  # .pt2: no .eval()
    try:
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export names the failing line in its message
        raise RuntimeError(f"it cannot be exported ({str(exc).splitlines()[0]})") from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(
                program,
                example,
                dynamo=True,
                optimize=True,
                verbose=False,
                input_names=["x"],
                output_names=["logits"],
            )
        except Exception as exc:
            raise RuntimeError(f"{_layer_of(exc, program)} has no ONNX equivalent") from None
    proto = onnx_program.model_proto
    for node in proto.graph.node:  # exporter stack traces: size, and paths of this machine
        del node.metadata_props[:]
        node.doc_string = ""
    nearest_resizes_as_gathers(proto)  # ONNX Runtime's INT8 Resize is slow (see upsample.py)
    return proto.SerializeToString()


MIN_CALIBRATION_TILE = 32
"""Smallest calibration tile side: the activation ranges of a few pixels say nothing of a
scene (and a 1 x 1 px tile broke the demo U-Net's upsampling inside ONNX Runtime)."""


def calibration_tiles(
    scene: xr.DataArray,
    model: SegmentationModel,
    *,
    tile_size: int = 256,
    count: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """``count`` tiles sampled across ``scene`` (a stratified grid with jitter), normalised
    as the model sees them: ``(n, bands, t, t)`` float32, NaN nodata as 0.

    Only those windows are read when ``scene`` is lazily opened. Tiles with no valid pixel
    are dropped; a scene with the wrong bands is a :class:`BandMismatchError`.
    """
    check_bands(model, scene)
    if count < 1:
        raise InvalidArgumentError(f"count must be >= 1, got {count}")
    height, width = scene.sizes["y"], scene.sizes["x"]
    t = min(tile_size, height, width) // model.align * model.align  # the model's stride
    if t < max(model.align, MIN_CALIBRATION_TILE):
        raise QuantizationError(
            f"The calibration scene is {width} x {height} px, too small for a calibration "
            f"tile of at least {max(model.align, MIN_CALIBRATION_TILE)} px: pass a larger "
            "scene of the model's sensor."
        )
    side = int(np.ceil(np.sqrt(count)))
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, height - t, side).astype(int)
    cols = np.linspace(0, width - t, side).astype(int)
    starts = sorted({(int(r), int(c)) for r in rows for c in cols})  # a small scene: no copies
    chosen = rng.choice(len(starts), size=min(count, len(starts)), replace=False)
    tiles = []
    with decoding("The calibration scene", fix="pass an uncorrupted GeoTIFF"):
        for r, c in (starts[i] for i in np.sort(chosen)):  # one window read per tile
            tile = model_input(model, scene.isel(y=slice(r, r + t), x=slice(c, c + t)))
            if np.isfinite(tile).any():
                tiles.append(np.nan_to_num(tile, nan=0.0))
    if not tiles:
        raise QuantizationError("The calibration scene has no valid pixels: pass another one.")
    return np.stack(tiles)


class _Reader:
    """Feeds calibration tiles to ONNX Runtime one at a time (its CalibrationDataReader)."""

    def __init__(self, tiles: np.ndarray, name: str):
        self._items = iter([{name: tile[None]} for tile in tiles])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def _cached_fp32_layers(int8: bytes, key: str | None) -> list[str]:
    """:func:`_fp32_layers` of the INT8 graph ``int8``, kept in the disk cache beside the
    graph under ``key`` (parsing it needs ``onnx``, whose import a cached graph avoids)."""
    stored = read_json_entry("int8", key, ".layers.json") if key else None
    if isinstance(stored, list):  # else absent or damaged: parsed again
        return stored
    import onnx

    left = _fp32_layers(onnx.load_from_string(int8).graph)
    if key:
        write_entry("int8", key, ".layers.json", json.dumps(left).encode())
    return left


def _fp32_layers(graph) -> list[str]:
    """Names of weighted layers whose weights were left in float (not quantized)."""
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return [
        node.name
        for node in graph.node
        if node.op_type in _WEIGHTED_OPS
        and len(node.input) > 1
        and node.input[1] not in dequantized
    ]


def _artefact_key(model: SegmentationModel, tiles: np.ndarray, per_channel: bool) -> str:
    """What an INT8 model depends on: the FP32 weights, the calibration tiles, the versions of
    the exporters and ONNX Runtime, and the CPU's VNNI (which sets ``reduce_range``). The
    versions from the installed metadata: importing ``onnx`` costs a process 0.6 s, which a
    graph read from the cache never needs."""
    return digest([
        model_fingerprint(model.module), np.ascontiguousarray(tiles, np.float32).tobytes(),
        str(tiles.shape), version("onnx"), version("onnxruntime"),
        f"vnni={cpu_info()['avx512_vnni']} per_channel={per_channel} nearest=gather",
        str(model.metadata.get("tile_size")),
    ])  # fmt: skip


def _quantized_onnx(
    model: SegmentationModel, tiles: np.ndarray, tile: int | None, per_channel: bool
) -> bytes | None:
    """The INT8 QDQ ONNX graph of ``model`` calibrated on ``tiles``; None (with a warning)
    when the model cannot be exported to ONNX."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    try:
        fp32 = _export_onnx(model.module, len(model.bands), model.align, tile)
    except RuntimeError as exc:
        warnings.warn(f"Model {model.name!r} stays FP32: {exc}.", QuantizationWarning, stacklevel=3)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_static logs advice on the root logger
        try:
            quantize_static(
                src,
                dst,
                _Reader(tiles, "x"),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                reduce_range=not cpu_info()["avx512_vnni"],
            )
        finally:
            root.setLevel(level)
        return dst.read_bytes()


def quantized_before(model: SegmentationModel, tiles: np.ndarray, *,
                     per_channel: bool = True) -> bool:  # fmt: skip
    """Whether :func:`quantize` would find ``model``'s INT8 graph for these calibration tiles
    in the disk cache (and so calibrate nothing)."""
    tiles = np.asarray(tiles, dtype=np.float32)
    return _cached_graph(_artefact_key(model, tiles, per_channel)) is not None


def quantize(
    model: SegmentationModel,
    calibration: np.ndarray | xr.DataArray,
    *,
    per_channel: bool = True,
    cache: bool = True,
) -> SegmentationModel:
    """Post-training static INT8 quantization of ``model``, calibrated on ``calibration``.

    With ``cache`` the INT8 graph is kept on disk (:mod:`seamline.core.diskcache`), keyed by
    the weights, the calibration tiles, the ONNX and ONNX Runtime versions and the CPU: the
    same model calibrated on the same scene is quantized once per machine.

    ``calibration`` is a scene (tiles are sampled across it with :func:`calibration_tiles`)
    or an array of normalised tiles ``(n, bands, t, t)``. Weights are INT8 per output
    channel, activations UINT8 with min/max ranges (``reduce_range`` on CPUs without VNNI,
    where U8S8 can saturate). Entropy and percentile calibration gave the same mIoU on the
    demo model (0.9984) at 1-2 s more, so min/max it is.

    A layer ONNX cannot express leaves the whole model FP32; a layer ONNX Runtime cannot
    quantize stays FP32 inside the INT8 graph. Both warn (:class:`QuantizationWarning`)
    naming the layer, and never crash.
    """
    if model.precision == "int8":
        return model
    if model.precision != "fp32":
        raise InvalidArgumentError(f"quantize an fp32 model, not a {model.precision} one")
    tile = model.metadata.get("tile_size")  # a torch.export model with a fixed tile
    tiles = (
        calibration_tiles(calibration, model, tile_size=tile or 256)
        if isinstance(calibration, xr.DataArray)
        else np.asarray(calibration, dtype=np.float32)
    )
    if tiles.ndim != 4 or tiles.shape[1] != len(model.bands):
        raise BandMismatchError(
            f"Calibration tiles must be (n, {len(model.bands)}, t, t) for model "
            f"{model.name!r}, got shape {tiles.shape}: pass a scene with its bands "
            f"({', '.join(model.bands)})."
        )
    key = _artefact_key(model, tiles, per_channel) if cache else None
    int8 = _cached_graph(key) if key else None
    cached = int8 is not None
    if int8 is None:
        int8 = _quantized_onnx(model, tiles, tile, per_channel)
        if int8 is None:
            return model  # it stays FP32 (warned)
    left = _cached_fp32_layers(int8, key)
    if key and not cached:  # the layers first: a graph in the cache has its list beside it
        write_entry("int8", key, ".onnx", int8)
    if left:
        warnings.warn(
            f"Model {model.name!r}: {len(left)} layer(s) stay FP32 (not quantizable by ONNX "
            f"Runtime): {', '.join(left[:5])}.",
            QuantizationWarning,
            stacklevel=2,
        )
    return _int8_model(model, int8, key=key, from_cache=cached, fp32_layers=left,
                       per_channel=per_channel, calibration_tiles=len(tiles))  # fmt: skip


def quantized_graph(model: SegmentationModel, key: str) -> SegmentationModel | None:
    """``model`` as the INT8 graph :func:`quantize` kept in the disk cache under ``key`` (its
    ``metadata["quantization"]["key"]``), without reading or hashing calibration tiles; None
    when the cache no longer has it."""
    int8 = _cached_graph(key)
    if int8 is None or model.precision != "fp32":
        return None
    left = _cached_fp32_layers(int8, key)
    return _int8_model(model, int8, key=key, from_cache=True, fp32_layers=left)


def _cached_graph(key: str) -> bytes | None:
    """The INT8 graph kept in the disk cache under ``key``; None when there is none or ONNX
    Runtime cannot read it (a truncated file: quantized again, not a failure every run)."""
    int8 = read_entry("int8", key, ".onnx")
    if int8 is None:
        return None
    import onnxruntime as ort

    try:  # a session costs ~5 ms; its bytes parse as protobuf only when whole
        ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 -- ONNX Runtime's own classes (InvalidProtobuf, Fail)
        return None
    return int8


def _int8_model(model: SegmentationModel, int8: bytes, *, key: str | None, from_cache: bool,
                fp32_layers: list[str], per_channel: bool = True,
                calibration_tiles: int | None = None) -> SegmentationModel:  # fmt: skip
    """``model`` running the INT8 graph ``int8`` on ONNX Runtime, with how it was made."""
    meta = {
        **model.metadata,
        "quantization": {
            "backend": "onnxruntime",
            "format": "QDQ",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "uint8",
            "calibration_tiles": calibration_tiles,
            "from_cache": from_cache,
            "fp32_layers": fp32_layers,
            "key": key,
        },
    }
    module = OnnxModule(int8, align=model.align)
    return replace(model, module=module, precision="int8", metadata=meta)


def save_quantized(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Write an INT8 model as ``PATH.onnx`` plus its JSON sidecar (atomically, sidecar last);
    :func:`seamline.core.models.modelio.load_model` loads it back without recalibrating."""
    path = Path(path)
    if not isinstance(model.module, OnnxModule):
        raise InvalidArgumentError(
            f"Model {model.name!r} is {model.precision}, not INT8: quantize it before saving."
        )
    if path.suffix != ".onnx":
        raise InvalidArgumentError(f"An INT8 model is saved as .onnx, got {str(path)!r}.")
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.module.onnx_bytes)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(model.sidecar(), indent=2))
    return path


def state_dict_bytes(module: nn.Module) -> int:
    """Serialized size of a module's FP32 state dict (what ``torch.save`` writes)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes
