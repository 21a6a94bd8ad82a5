"""Server-side paths a visitor may read: only inside the configured data roots.

The dashboard reads folders that a visitor types (the drift section's folder of GeoTIFFs).
:func:`resolve_under` resolves such a path (symlinks followed, ``..`` collapsed) and keeps it
only if it lies inside one of the roots, so ``..``, absolute paths elsewhere and symlinks that
escape are refused with one sentence. ``seamline serve --data-root DIR`` passes the roots to
the served app in the :data:`DATA_ROOTS_ENV` environment variable (see :func:`roots_from_env`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from seamline.core.errors import InputFileError, PathOutsideRootsError

__all__ = ["DATA_ROOTS_ENV", "data_roots", "resolve_under", "roots_from_env", "roots_to_env"]

DATA_ROOTS_ENV = "SEAMLINE_DATA_ROOTS"
"""Environment variable holding the data roots, separated by ``os.pathsep``."""


def data_roots(folders: Iterable[str | os.PathLike]) -> tuple[Path, ...]:
    """The folders as resolved roots; one sentence if one is not an existing folder."""
    roots = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise InputFileError(
                f"Data root {str(folder)!r} is not a folder: give an existing one."
            )
        roots.append(path.resolve(strict=True))
    return tuple(dict.fromkeys(roots))


def roots_to_env(roots: Iterable[Path]) -> str:
    """The value of :data:`DATA_ROOTS_ENV` for ``roots``."""
    return os.pathsep.join(str(root) for root in roots)


def roots_from_env(environ: Mapping[str, str] = os.environ) -> tuple[Path, ...]:
    """The data roots that :data:`DATA_ROOTS_ENV` names (none when it is unset or empty)."""
    return data_roots(p for p in environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def resolve_under(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path:
    """``path`` resolved, if it exists inside one of ``roots``; else one sentence.

    A relative ``path`` is taken relative to the first root. Symlinks are followed: one that
    stays inside the roots is fine, one that leads out of them is refused. A missing path
    outside the roots, or behind a symlink leading out, is reported as outside (so the answer
    never tells what exists there).

    Raises :class:`~core.errors.PathOutsideRootsError` for a path outside the roots (or no
    roots at all) and :class:`~core.errors.InputFileError` for a missing path inside them.
    """
    resolved_roots = tuple(Path(root).resolve() for root in roots)
    shown = ", ".join(str(root) for root in resolved_roots)
    if not resolved_roots:
        raise PathOutsideRootsError(
            f"Path {str(path)!r} cannot be read: this dashboard reads no server folders, "
            "start it with `seamline serve --data-root DIR` to allow one."
        )
    candidate = resolved_roots[0] / Path(path).expanduser()  # an absolute path replaces the root
    outside = PathOutsideRootsError(
        f"Path {str(path)!r} is outside the data roots this dashboard may read ({shown}): "
        "pick a folder inside them."
    )
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable or a symlink loop
        # Where it would be, through the symlinks that exist: a link leading out makes a
        # missing path outside too, so existing and missing files there answer alike.
        if not _inside(Path(os.path.realpath(candidate)), resolved_roots):
            raise outside from None
        raise InputFileError(
            f"Path {str(path)!r} does not exist under the data roots ({shown}): check its name."
        ) from None
    if not _inside(resolved, resolved_roots):
        raise outside
    return resolved
