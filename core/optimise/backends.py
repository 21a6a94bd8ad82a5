"""Execution backends for a model: eager PyTorch, or compiled once per machine by AOTInductor.

A compiled backend is built ahead of time: on its first batch the module is exported
(``torch.export``) at that batch's shape and compiled by inductor with frozen weights into a
package (a shared library and its constants), kept in Seamline's disk cache (``compiled/``,
docs/architecture.md "Caches") and keyed by the module's weights and architecture, the input's
shape, dtype and layout, the device, the CPU capability and torch's version. Later processes
load the package in milliseconds, without importing dynamo or inductor; ``torch.compile``
recompiled in every process from inductor's own cache (2-8 s for the demo U-Net on 2 cores).
A module ``torch.export`` cannot capture (data-dependent control flow, outputs that are not
one tensor) falls back to ``torch.compile``, compiled once per process.

Measured on the demo U-Net (docs/architecture.md, "CPU backends"), 512 x 512 tiles, 2 threads
(Xeon, AVX512 + AMX): BF16 autocast eager 45 ms/tile, BF16 ``torch.compile`` 27 ms, its
AOTInductor package 27 ms (18 s to build once, 0.01 s to load). Small batches win on CPU
(activations stay in cache).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from seamline.core.diskcache import cache_dir, digest, model_fingerprint
from seamline.core.hardware import cpu_info

__all__ = ["Compiled", "FixedBatch", "compiled", "forget_compiled", "use_inductor_cache"]

_CACHE: dict[tuple, nn.Module] = {}  # shared on purpose: one build per process
_LOCK = threading.Lock()


class FixedBatch(nn.Module):
    """Runs ``module`` on batches of exactly ``batch`` tiles, padding a short last batch.

    A compiled graph is specialised to its input shape; padding the last batch (at most
    ``batch - 1`` wasted tiles) avoids compiling another for it. ``eager`` is the module
    before compilation, for one-off runs at other shapes (a seam probe would compile again).
    """

    def __init__(self, module: nn.Module, batch: int, eager: nn.Module | None = None) -> None:
        super().__init__()
        self.module, self.batch = module, batch
        self.eager = eager if eager is not None else module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for ``x`` (any batch size up to ``batch``)."""
        n = x.shape[0]
        if n < self.batch:
            pad = x[-1:].expand(self.batch - n, *x.shape[1:])
            x = torch.cat([x, pad])
        return self.module(x.contiguous(memory_format=torch.channels_last))[:n]


class Compiled(nn.Module):
    """``module`` compiled ahead of time for each input shape it is called with, the code
    read from the disk cache when this machine built it before (``cache=False``: built in a
    temporary folder, neither read nor kept). ``built`` says how each shape got its code:
    ``"loaded"``, ``"compiled"`` (AOTInductor now) or ``"jit"`` (``torch.compile``)."""

    def __init__(self, module: nn.Module, *, cache: bool = True) -> None:
        super().__init__()
        self.eager, self.cache = module, cache
        self.built: dict[tuple, str] = {}
        self._runners: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for ``x``, by the code compiled for its shape."""
        shape = (tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))
        runner = self._runners.get(shape)
        if runner is None:
            with self._lock:
                if shape not in self._runners:
                    self._runners[shape], self.built[shape] = self._build(x)
                runner = self._runners[shape]
        return runner(x)

    def _build(self, x: torch.Tensor) -> tuple[Callable, str]:
        """The code for ``x``'s shape and how it was got."""
        if not self.cache:
            with tempfile.TemporaryDirectory() as folder:
                return _package_runner(self.eager, x, Path(folder) / "model.pt2", cache=False)
        if self._fingerprint is None:  # the weights are hashed once per module
            self._fingerprint = model_fingerprint(self.eager)
        path = cache_dir() / "compiled" / f"{_package_key(self._fingerprint, self.eager, x)}.pt2"
        if path.is_file():
            try:
                return _load_package(path, x.device), "loaded"
            except RuntimeError:  # a damaged or partial entry: built again
                path.unlink(missing_ok=True)
        return _package_runner(self.eager, x, path)


def _package_key(fingerprint: str, module: nn.Module, x: torch.Tensor) -> str:
    """What a package's code depends on: the weights, the architecture (its repr, which names
    e.g. the autocast dtype), the input, the device and CPU, and torch's version."""
    info = cpu_info()  # not its thread count: the code runs on any number of threads
    gpu = ""
    if x.device.type == "cuda":
        props = torch.cuda.get_device_properties(x.device)
        gpu = f"{props.name} sm{props.major}{props.minor}"
    return digest([
        fingerprint, repr(module), str(tuple(x.shape)), str(tuple(x.stride())), str(x.dtype),
        gpu, f"{info['cpu']} {info['capability']} amx={info['amx']} "
        f"vnni={info['avx512_vnni']}", torch.__version__, "aoti-1",
    ])  # fmt: skip


def _load_package(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package at ``path`` as a function of one tensor. The bare loader: torch's
    ``aoti_load_package`` would import inductor (2 s) to do the same."""
    index = -1 if device.type == "cpu" else (device.index or 0)
    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, index)
    return lambda x: loader.run([x])[0]


def _package_runner(module: nn.Module, x: torch.Tensor, path: Path,
                    cache: bool = True) -> tuple[Callable, str]:  # fmt: skip
    """``module`` exported at ``x``'s shape, compiled by AOTInductor into ``path`` (moved there
    whole: a concurrent reader sees a package or none) and loaded; ``torch.compile`` where it
    cannot be exported."""
    import torch._inductor
    import torch._inductor.config as inductor_config

    use_inductor_cache(cache)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecations
            program = torch.export.export(module, (x,))
        if len(program.graph_signature.user_outputs) != 1:
            raise ValueError("the module returns more than one tensor")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            partial = Path(folder) / path.name  # inductor wants a name ending in .pt2
            with inductor_config.patch(freezing=True):
                torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
            os.replace(partial, path)
        return _load_package(path, x.device), "compiled"
    except Exception:  # noqa: BLE001 -- any module torch.export cannot capture
        return torch.compile(module, dynamic=False, options={"freezing": True}), "jit"


def use_inductor_cache(cache: bool = True) -> None:
    """Keep inductor's working files beside Seamline's cache (unless the user chose a place).
    Where that folder cannot be made (a read-only home, a file in its way), or with ``cache``
    False (``--no-cache``: nothing written there), in a folder of this process's own, removed
    at exit: importing inductor makes its folder, and failed there with a traceback."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    folder = cache_dir() / "inductor"
    if not (cache and _writable(folder)):
        folder = Path(tempfile.mkdtemp(prefix="seamline-inductor-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and this user can write in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def compiled(
    module: nn.Module, *, batch: int, device: torch.device | str = "cpu", cache: bool = True
) -> nn.Module:
    """``module`` compiled (:class:`Compiled`, on its first batch) on ``device``, once per
    process. The returned module keeps ``align`` and takes tiles of any batch size up to
    ``batch``; the code is compiled for ``batch`` channels-last tiles."""
    device = torch.device(device)
    key = (id(module), str(device), batch, cache)
    with _LOCK:
        if key not in _CACHE:
            module = module.to(device, memory_format=torch.channels_last).eval()
            wrapped = FixedBatch(Compiled(module, cache=cache), batch, eager=module)
            wrapped.align = getattr(module, "align", 1)
            _CACHE[key] = wrapped
        return _CACHE[key]


def forget_compiled() -> None:
    """Drop this process's compiled modules and dynamo's state: the next :func:`compiled`
    loads its code from the disk cache (what a new process pays)."""
    with _LOCK:
        _CACHE.clear()
    torch._dynamo.reset()
