"""The ``optimise`` stage: post-training static INT8 quantization with calibration, and BF16.

Backend decision (measured, see ``docs/quantization.md``): INT8 runs on **ONNX Runtime**,
static QDQ quantization with per-channel INT8 weights and UINT8 activations calibrated on
representative tiles. On the two CPU kinds Seamline meets it is the only INT8 path that is
fast on both (seconds per batch of 4 x 256^2, demo U-Net, 2 threads: 0.041 on AVX-512 VNNI
+ AMX, 0.14 on AVX2, vs FP32 eager 0.13 / 0.69); it needs no ``torch.compile`` per process
(the torchao PT2E + inductor path, 0.035 / 0.26, compiles for 7-25 s in every process), its
artifact is a small self-contained ``.onnx`` file, and the legacy ``torch.ao`` FX path is
deprecated. BF16 is ``torch.autocast`` (:func:`core.modelio.with_precision`), native only
with AMX or AVX512-BF16.

A quantized model is a :class:`~core.modelio.SegmentationModel` whose module is an
:class:`OnnxModule`; it plugs into :func:`core.tiling.predict_tiled` like any module, and
:func:`save_quantized` / :func:`core.modelio.load_model` keep it, so serving never
recalibrates.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import re
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from core.errors import BandMismatchError, InvalidArgumentError, SeamlineError
from core.hardware import cpu_info
from core.io import atomic_path
from core.modelio import SegmentationModel, check_bands

__all__ = [
    "OnnxModule",
    "QuantizationWarning",
    "QuantizationError",
    "calibration_tiles",
    "default_calibration",
    "state_dict_bytes",
    "quantize",
    "save_quantized",
    "INT8_OPS",
]

INT8_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm")
"""ONNX Runtime kernels that compute in integers; a quantized graph must contain them."""
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_EXPORT_SIZE = 64  # tile side used to trace the model; H, W and batch stay dynamic
PARALLEL_CALLS = 2
"""Calls of an :class:`OnnxModule` kept in flight by tiled inference (see ``parallel_forward``)."""


class QuantizationWarning(UserWarning):
    """Part or all of a model stays FP32 because a layer cannot be quantized."""


class QuantizationError(SeamlineError):
    """Quantization cannot run: bad calibration data or a missing backend."""


class OnnxModule(nn.Module):
    """An ONNX model run by ONNX Runtime on the CPU, as a module: ``(B, bands, H, W)`` float32
    tensor -> ``(B, classes, H, W)`` float32 tensor (on the input's device)."""

    channels_last = False  # ONNX Runtime takes contiguous NCHW arrays

    def __init__(self, onnx_bytes: bytes, *, align: int = 1, threads: int | None = None):
        super().__init__()
        self.onnx_bytes, self.align = onnx_bytes, align
        self.threads = threads or torch.get_num_threads()
        self.session = self._session(self.threads)
        self.input_name = self.session.get_inputs()[0].name
        self._replicas: queue.SimpleQueue | None = None  # built on first parallel_forward()
        self._replicas_lock = threading.Lock()

    def _session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning: a served model shares its cores with the web
        # server (and, on a laptop, the browser). Measured on 2 cores, 512^2 INT8 tile: 48 ms
        # either way when alone, 55 ms sleeping vs 67 ms spinning beside a half-busy core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])

    def __reduce__(self) -> tuple:
        """Pickled as its ONNX bytes (e.g. to a dask worker), where a new session is built."""
        return (_onnx_module, (self.onnx_bytes, self.align))

    def _run(self, session, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on ``x`` (on all its threads); the result comes back on ``x``'s
        device."""
        return self._run(self.session, x)

    def parallel_forward(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
        """A thread-safe forward and how many calls of it to keep in flight, for tiled
        inference (core.tiling.predict_tiled): two sessions, each on half the threads.

        A second call fills the cores one call's kernels leave idle between operators.
        Measured on 2 cores, 25 INT8 tiles of 512^2: 1.33-1.39 s one call at a time on a
        2-thread session, 1.04-1.07 s two at a time on two 1-thread sessions, 1.12-1.15 s two
        at a time on one 2-thread session (whose threads also contend with torch's, blending
        the outputs beside it). Two, not one per core: each session keeps its own memory arena
        (hundreds of MB after large batches), and on many cores two calls of half the threads
        keep them busy. A single call (a served tile) keeps the session on all threads: 55 vs
        82 ms on one of them.
        """
        if self.threads == 1:
            return self.forward, 1
        with self._replicas_lock:
            if self._replicas is None:
                replicas: queue.SimpleQueue = queue.SimpleQueue()
                for _ in range(PARALLEL_CALLS):
                    replicas.put(self._session(max(1, self.threads // PARALLEL_CALLS)))
                self._replicas = replicas

        def forward(x: torch.Tensor) -> torch.Tensor:
            session = self._replicas.get()  # waits while both are busy (another run)
            try:
                return self._run(session, x)
            finally:
                self._replicas.put(session)

        return forward, PARALLEL_CALLS

    def size_bytes(self) -> int:
        """Serialized size of the model in bytes."""
        return len(self.onnx_bytes)

    def kernel_ops(self) -> Counter:
        """Operator types of the graph ONNX Runtime actually runs (after its fusions)."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            options.log_severity_level = 3
            ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath).graph
        return Counter(node.op_type for node in graph.node)


def _onnx_module(onnx_bytes: bytes, align: int) -> OnnxModule:
    """Unpickle an :class:`OnnxModule`: a session on this process's threads."""
    return OnnxModule(onnx_bytes, align=align)


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


def _export_onnx(module: nn.Module, bands: int, align: int) -> bytes:
    """The module as ONNX bytes (BatchNorm folded, dynamic batch/height/width); a
    ``RuntimeError`` naming the layer when an operator has no ONNX equivalent."""
    side = max(_EXPORT_SIZE, align * 8)
    example = (torch.zeros(2, bands, side, side),)
    dynamic = ({i: torch.export.Dim.DYNAMIC for i in (0, 2, 3)},)  # positional: any arg name
    module = module.to(memory_format=torch.contiguous_format).eval()
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
    return proto.SerializeToString()


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
    from core.predict import _model_input  # normalisation exactly as predict does it

    check_bands(model, scene)
    if count < 1:
        raise InvalidArgumentError(f"count must be >= 1, got {count}")
    height, width = scene.sizes["y"], scene.sizes["x"]
    t = min(tile_size, height, width)
    side = int(np.ceil(np.sqrt(count)))
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, height - t, side).astype(int)
    cols = np.linspace(0, width - t, side).astype(int)
    starts = [(r, c) for r in rows for c in cols]
    chosen = rng.choice(len(starts), size=min(count, len(starts)), replace=False)
    tiles = []
    for r, c in (starts[i] for i in np.sort(chosen)):  # one window read per tile
        tile = _model_input(model, scene.isel(y=slice(r, r + t), x=slice(c, c + t)))
        if np.isfinite(tile).any():
            tiles.append(np.nan_to_num(tile, nan=0.0))
    if not tiles:
        raise QuantizationError("The calibration scene has no valid pixels: pass another one.")
    return np.stack(tiles)


def default_calibration(model: SegmentationModel) -> xr.DataArray:
    """A synthetic 512 x 512 scene (a training seed, not a held-out one) for a model that
    reads the synthetic bands, such as the demo model; other models must be given a scene."""
    from core.synthetic import BANDS, make_scene

    if not set(model.bands) <= set(BANDS):
        raise QuantizationError(
            f"Model {model.name!r} reads bands {', '.join(model.bands)}: pass a calibration "
            "scene with them (--calibration SCENE)."
        )
    return make_scene(512, 512, seed=100)[0]


class _Reader:
    """Feeds calibration tiles to ONNX Runtime one at a time (its CalibrationDataReader)."""

    def __init__(self, tiles: np.ndarray, name: str):
        self._items = iter([{name: tile[None]} for tile in tiles])

    def get_next(self) -> dict | None:
        return next(self._items, None)


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


def quantize(
    model: SegmentationModel,
    calibration: np.ndarray | xr.DataArray,
    *,
    per_channel: bool = True,
) -> SegmentationModel:
    """Post-training static INT8 quantization of ``model``, calibrated on ``calibration``.

    ``calibration`` is a scene (tiles are sampled across it with :func:`calibration_tiles`)
    or an array of normalised tiles ``(n, bands, t, t)``. Weights are INT8 per output
    channel, activations UINT8 with min/max ranges (``reduce_range`` on CPUs without VNNI,
    where U8S8 can saturate). Entropy and percentile calibration gave the same mIoU on the
    demo model (0.9984) at 1-2 s more, so min/max it is.

    A layer ONNX cannot express leaves the whole model FP32; a layer ONNX Runtime cannot
    quantize stays FP32 inside the INT8 graph. Both warn (:class:`QuantizationWarning`)
    naming the layer, and never crash.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if model.precision == "int8":
        return model
    if model.precision != "fp32":
        raise InvalidArgumentError(f"quantize an fp32 model, not a {model.precision} one")
    tiles = (
        calibration_tiles(calibration, model)
        if isinstance(calibration, xr.DataArray)
        else np.asarray(calibration, dtype=np.float32)
    )
    if tiles.ndim != 4 or tiles.shape[1] != len(model.bands):
        raise BandMismatchError(
            f"Calibration tiles must be (n, {len(model.bands)}, t, t) for model "
            f"{model.name!r}, got shape {tiles.shape}: pass a scene with its bands "
            f"({', '.join(model.bands)})."
        )
    try:
        fp32 = _export_onnx(model.module, len(model.bands), model.align)
    except RuntimeError as exc:
        warnings.warn(f"Model {model.name!r} stays FP32: {exc}.", QuantizationWarning, stacklevel=2)
        return model
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
        int8 = dst.read_bytes()
    left = _fp32_layers(onnx.load_from_string(int8).graph)
    if left:
        warnings.warn(
            f"Model {model.name!r}: {len(left)} layer(s) stay FP32 (not quantizable by ONNX "
            f"Runtime): {', '.join(left[:5])}.",
            QuantizationWarning,
            stacklevel=2,
        )
    module = OnnxModule(int8, align=model.align)
    meta = {
        **model.metadata,
        "quantization": {
            "backend": "onnxruntime",
            "format": "QDQ",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "uint8",
            "calibration_tiles": int(len(tiles)),
            "fp32_layers": left,
        },
    }
    return replace(model, module=module, precision="int8", metadata=meta)


def save_quantized(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Write an INT8 model as ``PATH.onnx`` plus its JSON sidecar (atomically, sidecar last);
    :func:`core.modelio.load_model` loads it back without recalibrating."""
    import json

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
