"""Execution backends for a model: eager PyTorch, or ``torch.compile`` with frozen weights.

Compilation costs seconds (more on AVX2-only CPUs) and is done once per (module, device,
batch) per process, and by dynamo once per tile shape; inductor's on-disk graph cache makes
later processes faster. Measured on the demo U-Net (docs/architecture.md, "CPU backends"), 256 x 256
tiles, 2 threads (Xeon, AVX512 + AMX): eager channels-last 22 ms/tile at batch 1, 32 ms at batch 8;
compiled 11.5 ms at batch 1, 22 ms at batch 8. Small batches win on CPU (activations stay in cache).
"""

from __future__ import annotations

import threading

import torch
from torch import nn

__all__ = ["FixedBatch", "compiled", "forget_compiled"]

_CACHE: dict[tuple, nn.Module] = {}  # shared on purpose: compile once per process
_LOCK = threading.Lock()


class FixedBatch(nn.Module):
    """Runs ``module`` on batches of exactly ``batch`` tiles, padding a short last batch.

    A compiled graph is specialised to its input shape; padding the last batch (at most
    ``batch - 1`` wasted tiles) avoids recompiling for it. ``eager`` is the module before
    compilation, for one-off runs at other shapes (a seam probe would recompile, ~4-8 s).
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
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        return self.module(x)[:n]


def compiled(module: nn.Module, *, batch: int, device: torch.device | str = "cpu") -> nn.Module:
    """``module`` compiled by inductor (weights frozen), cached per process.

    The returned module keeps ``align`` and takes channels-last tiles of any batch size up
    to ``batch``.
    """
    import torch._inductor.config as inductor_config

    device = torch.device(device)
    key = (id(module), str(device), batch)
    with _LOCK:
        if key not in _CACHE:
            inductor_config.freezing = True  # constant-fold weights into the graph
            module = module.to(device, memory_format=torch.channels_last).eval()
            wrapped = FixedBatch(torch.compile(module, dynamic=False), batch, eager=module)
            wrapped.align = getattr(module, "align", 1)
            _CACHE[key] = wrapped
        return _CACHE[key]


def forget_compiled() -> None:
    """Drop this process's compiled modules and dynamo's state: the next :func:`compiled`
    compiles again, from inductor's disk cache (what a new process pays)."""
    with _LOCK:
        _CACHE.clear()
    torch._dynamo.reset()
