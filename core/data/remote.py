"""Remote rasters: Cloud-Optimized GeoTIFFs read over HTTP(S) with range requests.

GDAL's ``/vsicurl/`` (through rasterio) reads a COG's header, then only the blocks a window
needs, each as an HTTP range request, so predicting or preparing an AOI of a large remote
scene fetches a small share of its bytes. :func:`remote_raster` sets the GDAL options that
make this efficient for a whole process (its later lazy reads and the dask workers it
starts included): no directory listing on open (a listing fetches the folder's index for
every file), merged and parallel ranges, a block cache, retries. Options the user set in the
environment are kept.

Remote sources are for trusted callers (the CLI and the Python API): the dashboard and the
service read only local files under their data roots (SECURITY.md).
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from seamline.core.errors import InputFileError

__all__ = ["GDAL_REMOTE_OPTIONS", "is_remote", "remote_raster", "source_path"]

GDAL_REMOTE_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the URL's folder on open
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent blocks in one request
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2 where the server speaks it
    "VSI_CACHE": "TRUE",  # a block read twice (two strips' halos) is fetched once
    "GDAL_HTTP_MAX_RETRY": "3",  # a transient 429/5xx is retried, not a failed job
    "GDAL_HTTP_RETRY_DELAY": "1",
}
"""GDAL configuration for range reads of COGs (set where the environment does not)."""


def is_remote(path: object) -> bool:
    """Whether ``path`` is an HTTP(S) URL."""
    return isinstance(path, str) and urlsplit(path).scheme in ("http", "https")


def source_path(source: str | os.PathLike) -> PurePosixPath:
    """The path of a local file or of a URL (its name and stem name the scene)."""
    return PurePosixPath(urlsplit(str(source)).path)


def remote_raster(url: str) -> str:
    """``url``, checked to name a host, with GDAL set up for range reads (see the module
    docstring); one sentence if it names none."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.path.strip("/"):
        raise InputFileError(
            f"Raster URL {url!r} names no file on a host: pass e.g. "
            "https://host/path/scene.tif."
        )
    for key, value in GDAL_REMOTE_OPTIONS.items():
        os.environ.setdefault(key, value)
    return url
