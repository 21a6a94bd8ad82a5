"""What a page says when a callback meets something that is not a user mistake."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import param

from seamline.core.errors import SeamlineError

__all__ = ["unexpected_errors"]

LOG = logging.getLogger("seamline.dashboard")


@contextmanager
def unexpected_errors(state: param.Parameterized) -> Iterator[None]:
    """Turn an error that is not a :class:`SeamlineError` (a bug, a library failure) into one
    sentence in ``state.message``, the traceback in the server log; user mistakes pass on to
    the caller, which words them itself."""
    try:
        yield
    except SeamlineError:
        raise
    except Exception as exc:  # a page callback must not die silently or leave controls locked
        LOG.exception("dashboard callback failed")
        first = str(exc).splitlines()[0] if str(exc) else ""
        state.message = (
            f"Something went wrong ({type(exc).__name__}{': ' + first if first else ''}): "
            "this is a bug; the server log has the details."
        )
