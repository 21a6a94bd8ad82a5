"""One exception hierarchy for every user-facing failure.

Each error carries one sentence that names the input and what to do about it. The CLI and
the dashboard catch :class:`SeamlineError` once, at their edge, and show that sentence with
no traceback. Anything else that escapes is a bug in Seamline, not a user mistake.
"""

from __future__ import annotations


class SeamlineError(Exception):
    """Base class: a user-facing problem with a one-sentence explanation."""


class SeamlineWarning(UserWarning):
    """Base class: work goes on, but the result is not what the user may expect (one
    sentence, shown by the CLI as ``seamline COMMAND: warning: ...``)."""


class InputFileError(SeamlineError, FileNotFoundError):
    """A file to read is missing, unreadable or not in a format Seamline understands."""


class OutputPathError(SeamlineError):
    """A file cannot be written where the user asked (missing folder, not writable)."""


class MissingCRSError(SeamlineError):
    """A raster or vector has no coordinate reference system."""


class InvalidCRSError(SeamlineError, ValueError):
    """A CRS string that pyproj does not understand."""


class GeometryError(SeamlineError, ValueError):
    """An AOI that is empty, invalid, or does not overlap the raster."""


class NoDataError(SeamlineError, ValueError):
    """A scene, clip or tile with no valid pixels."""


class BandMismatchError(SeamlineError, ValueError):
    """Band names or counts that do not match what the statistics or the model expect."""


class InvalidArgumentError(SeamlineError, ValueError):
    """An option out of its range or not among its choices."""


class BaselineError(SeamlineError, ValueError):
    """A drift baseline file that is corrupt, of another format or of an unknown version."""


class HistoryError(SeamlineError):
    """A drift history database that is corrupt, foreign, locked or of a newer schema."""


class SizeLimitError(SeamlineError, ValueError):
    """An input larger than a configured limit (bytes of an upload, pixels of a scene)."""


class PathOutsideRootsError(SeamlineError, PermissionError):
    """A server-side path outside the data roots the dashboard was allowed to read."""


class UntrustedModelError(SeamlineError):
    """A model file whose loading would run code, given without ``trust_model``."""


class DataTypeError(SeamlineError, ValueError):
    """A raster whose pixel data type is not among those allowed (e.g. complex values)."""


class HostNotAllowedError(SeamlineError, PermissionError):
    """A URL from a dashboard visitor or service client on a host the operator did not allow."""
