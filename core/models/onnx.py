"""ONNX models as torch modules: the runtime of INT8 models (and any ``.onnx`` a user brings).

:class:`OnnxModule` plugs into :func:`seamline.core.predict.tiling.predict_tiled` like any
module; :mod:`seamline.core.optimise.quantize` builds them,
:func:`seamline.core.models.modelio.load_model` loads them from disk.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from seamline.core.data.files import first_line

__all__ = ["OnnxModule", "PARALLEL_CALLS"]

PARALLEL_CALLS = 2
"""Calls of an :class:`OnnxModule` kept in flight by tiled inference (see ``parallel_forward``)."""



class OnnxModule(nn.Module):
    """An ONNX model run by ONNX Runtime on the CPU, as a module: ``(B, bands, H, W)`` float32
    tensor -> ``(B, classes, H, W)`` float32 tensor (on the input's device)."""

    channels_last = False  # ONNX Runtime takes contiguous NCHW arrays

    def __init__(self, onnx_bytes: bytes, *, align: int = 1, threads: int | None = None):
        super().__init__()
        self.onnx_bytes, self.align = onnx_bytes, align
        self.threads = threads or torch.get_num_threads()
        try:
            self.session = self._session(self.threads)
        except Exception as exc:  # ONNX Runtime's own classes (InvalidProtobuf, Fail, ...)
            raise ValueError(f"ONNX Runtime cannot read it: {first_line(exc)}") from None
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
        inference (seamline.core.predict.tiling.predict_tiled): two sessions, each on half the
        threads.

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
