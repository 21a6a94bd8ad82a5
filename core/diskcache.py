"""What Seamline measures or builds once per machine, kept on disk between processes.

Model geometry, quantized models and the automatic backend choice are all keyed by what they
depend on (the model's bytes or weights, versions, CPU capability, calibration data) and
written atomically, so a concurrent reader sees a whole entry or none. A cache that cannot be
written (a read-only home) only costs the work again. Location: ``$SEAMLINE_CACHE_DIR``, else
``$XDG_CACHE_HOME/seamline``, else ``~/.cache/seamline`` (docs/architecture.md, "Caches").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "cache_dir",
    "digest",
    "model_fingerprint",
    "read_entry",
    "read_json_entry",
    "write_entry",
]

CACHE_ENV = "SEAMLINE_CACHE_DIR"


def cache_dir() -> Path:
    """Where Seamline keeps what it measured or built once per machine: ``$SEAMLINE_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/seamline``, else ``~/.cache/seamline``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seamline"


def digest(parts: Iterable[bytes | str]) -> str:
    """SHA-256 of the parts, in order (strings as UTF-8)."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
    return hasher.hexdigest()


def model_fingerprint(module, source: bytes | None = None) -> str:
    """A model's identity: its file's bytes (``source``), else its class and weights (names,
    shapes, values), with the torch version that reads them."""
    import torch

    if source is not None:
        return digest([torch.__version__, source])

    def parts():
        yield torch.__version__
        yield type(module).__qualname__
        for name, tensor in module.state_dict().items():
            yield name
            yield str(tuple(tensor.shape))
            yield tensor.detach().cpu().contiguous().numpy().tobytes()

    return digest(parts())


def read_entry(kind: str, key: str, suffix: str) -> bytes | None:
    """The bytes stored under ``kind/key + suffix``, or None when there are none."""
    try:
        return (cache_dir() / kind / f"{key}{suffix}").read_bytes()
    except OSError:
        return None


def read_json_entry(kind: str, key: str, suffix: str = ".json") -> object | None:
    """The JSON value stored under ``kind/key + suffix``, or None when there is none or it is
    damaged (not JSON: a disk that filled, a hand edit): measured or built again."""
    stored = read_entry(kind, key, suffix)
    try:
        return None if stored is None else json.loads(stored)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None


def write_entry(kind: str, key: str, suffix: str, data: bytes) -> None:
    """Store ``data`` under ``kind/key + suffix`` atomically (through the outputs'
    :func:`~seamline.core.data.files.atomic_path`); a failed write is ignored."""
    from seamline.core.data.files import atomic_path
    from seamline.core.errors import SeamlineError

    path = cache_dir() / kind / f"{key}{suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            partial.write_bytes(data)
    except (OSError, SeamlineError):  # e.g. a read-only home: the work is done again
        pass
