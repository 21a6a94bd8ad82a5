"""Files: inputs that must exist, read errors as one sentence, outputs, atomic writes.

The standard library and rasterio's errors only, so that light entry points (``seamline
vectorize``) can use them without importing xarray, rioxarray or geopandas through
:mod:`seamline.core.data.io`, which re-exports them.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rasterio.errors import RasterioError

from seamline.core.errors import InputFileError, OutputPathError

__all__ = [
    "existing_file",
    "first_line",
    "decoding",
    "check_output_path",
    "atomic_path",
    "quiet_undecodable_gdal_messages",
]


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; one sentence if it is missing or a folder (``what``: "Raster")."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} file {str(path)!r} does not exist: check the path.")
    if path.is_dir():
        raise InputFileError(f"{what} path {str(path)!r} is a folder, not a file: pass a file.")
    return path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (GDAL's can run over several)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def decoding(what: str, *, fix: str = "pass an uncorrupted raster") -> Iterator[None]:
    """Turn GDAL's read errors inside the block into one :class:`InputFileError` sentence.

    A raster opens lazily from its header; corrupt or truncated pixel data only fails
    when a window is read, later. ``what`` names the input (``"Raster file 'a.tif'"``).
    """
    try:
        yield
    except RasterioError as exc:
        raise InputFileError(f"{what} could not be decoded ({_gdal_reason(exc)}): {fix}.") from None


def _gdal_reason(exc: BaseException) -> str:
    """GDAL's own reason, not rasterio's "Read failed. See previous exception": the first
    line of the innermost chained error, without the file name GDAL puts before it."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return re.sub(r"^\S+\.tiff?[,:]\s*", "", first_line(exc))


def check_output_path(
    path: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = ()
) -> Path:
    """Fail early, with one sentence, if ``path`` cannot be written (missing folder), or is
    one of the ``inputs`` (writing it would destroy what is being read)."""
    path = Path(path)
    for source in inputs:
        if path.exists() and Path(source).exists() and path.samefile(source):
            raise OutputPathError(
                f"Output {str(path)!r} is the input file {str(source)!r}: writing it would "
                "overwrite the input; choose another output path."
            )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(
            f"Output folder {str(parent)!r} does not exist: create it or choose another path."
        )
    if path.is_dir():
        raise OutputPathError(
            f"Output {str(path)!r} is a folder: give the path of a file (in it, or beside it)."
        )
    try:  # created and removed: os.access says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise OutputPathError(
            f"Output folder {str(parent)!r} cannot be written to ({exc.strerror}): choose "
            "another."
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A failure (or Ctrl-C, or SIGTERM to the CLI) inside the block removes the temporary file,
    so no partial output is ever left under the final name. A process killed outright
    (``kill -9``) cannot clean up: its temporary file names its process id, and the next
    write of the same output removes it once that process is gone.
    """
    path = check_output_path(path)
    _remove_orphaned_parts(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent or "."
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal modes
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove_orphaned_parts(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` whose process has died."""
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        pid = part.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            part.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _from_rasterio_err(exc: BaseException | None, where: object = None) -> bool:
    """Whether ``exc`` is a UnicodeDecodeError raised in rasterio's GDAL error handler."""
    if not isinstance(exc, UnicodeDecodeError):
        return False
    if str(where).startswith("rasterio._err"):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(("rasterio/_err.pyx", "rasterio\\_err.pyx")):
            return True
        tb = tb.tb_next
    return False


def quiet_undecodable_gdal_messages() -> None:
    """Drop the traceback rasterio prints when GDAL's error message about a corrupt file is
    not UTF-8 (rasterio issue #3128; found by fuzzing). Its Cython error handler prints the
    UnicodeDecodeError through :data:`sys.excepthook` and :data:`sys.unraisablehook`; GDAL's
    error still reaches the caller as an exception, which becomes one sentence, so only the
    noise goes. Installs both hooks once; anything else is reported as before."""
    unraisable, excepthook = sys.unraisablehook, sys.excepthook
    if getattr(unraisable, "seamline", False):
        return

    def unraisable_hook(args: sys.UnraisableHookArgs) -> None:
        if not _from_rasterio_err(args.exc_value, args.object):
            unraisable(args)

    def except_hook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        if not _from_rasterio_err(value):
            excepthook(kind, value, tb)

    unraisable_hook.seamline = True
    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
