"""How a ``seamline`` command process ends and warns: SIGTERM unwinds like Ctrl-C (so partial
outputs are removed), and Seamline's own warnings print as one line."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from seamline.core.errors import SeamlineWarning

__all__ = ["Terminated", "one_line_warnings", "silence_stdout", "terminate_cleanly"]


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so partial outputs are removed on the way out."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated


def terminate_cleanly():
    """Turn SIGTERM into :class:`Terminated` (Python's default ends the process without
    running ``finally`` blocks, leaving hidden ``.part`` files); the previous handler, or None
    off the main thread (where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def silence_stdout() -> None:
    """Point stdout at the null device: its reader is gone (``seamline drift history | head``),
    and Python's flush at exit would otherwise print a ``BrokenPipeError`` of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def one_line_warnings(command: str, default: Callable) -> Callable:
    """A ``warnings.showwarning`` that prints Seamline's own warnings as one line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, SeamlineWarning):
            print(f"seamline {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show
