"""Remote rasters: Cloud-Optimized GeoTIFFs read over HTTP(S) with range requests.

GDAL's ``/vsicurl/`` (through rasterio) reads a COG's header, then only the blocks a window
needs, each as an HTTP range request, so predicting or preparing an AOI of a large remote
scene fetches a small share of its bytes. :func:`remote_raster` sets the GDAL options that
make this efficient for a whole process (its later lazy reads and the dask workers it
starts included): no directory listing on open (a listing fetches the folder's index for
every file), merged and parallel ranges, a block cache, retries. Options the user set in the
environment are kept.

Remote sources are for trusted callers (the CLI and the Python API). A dashboard visitor or a
service client may name a URL only on a host the operator allowed (``--allow-remote-host``,
:func:`allowed_hosts`, :func:`check_allowed`); :func:`seamline.core.data.io.open_allowed`
opens it as a GeoTIFF only, with timeouts and no redirect (SECURITY.md, "Remote rasters").
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from seamline.core.errors import HostNotAllowedError, InputFileError, InvalidArgumentError

__all__ = [
    "GDAL_REMOTE_OPTIONS",
    "REMOTE_HOSTS_ENV",
    "allowed_hosts",
    "check_allowed",
    "hosts_from_env",
    "is_remote",
    "refuse_redirect",
    "remote_raster",
    "source_path",
    "visitor_options",
]

GDAL_REMOTE_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the URL's folder on open
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent blocks in one request
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2 where the server speaks it
    "VSI_CACHE": "TRUE",  # a block read twice (two strips' halos) is fetched once
    "GDAL_HTTP_MAX_RETRY": "3",  # a transient 429/5xx is retried, not a failed job
    "GDAL_HTTP_RETRY_DELAY": "1",
}
"""GDAL configuration for range reads of COGs (set where the environment does not)."""
REMOTE_HOSTS_ENV = "SEAMLINE_REMOTE_HOSTS"
"""Environment variable holding the allowed hosts of ``seamline serve``, comma-separated."""
VISITOR_TIMEOUT = 30
"""Seconds a visitor's URL may take to answer one request (GDAL's and the redirect check's):
a slow or silent host fails the read instead of holding a server thread."""
_DEFAULT_PORTS = {"http": 80, "https": 443}


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


def allowed_hosts(entries: Iterable[str]) -> tuple[str, ...]:
    """The operator's allow-list as ``host`` or ``host:port`` entries (lower case); one
    sentence for an entry that is not one (a URL, a path, a wildcard, credentials)."""
    hosts = []
    for entry in entries:
        parts = urlsplit(f"//{entry.strip()}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (not parts.hostname or parts.path or parts.query or parts.username or port == -1
                or "*" in entry or "/" in entry):  # fmt: skip
            raise InvalidArgumentError(
                f"--allow-remote-host {entry!r} is not a host name: give one as it appears in "
                "the URLs, e.g. data.example.org or tiles.example.org:8443."
            )
        hosts.append(parts.hostname + (f":{port}" if port is not None else ""))
    return tuple(dict.fromkeys(hosts))


def hosts_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The allowed hosts that :data:`REMOTE_HOSTS_ENV` names (none when unset or empty)."""
    return allowed_hosts(h for h in environ.get(REMOTE_HOSTS_ENV, "").split(",") if h.strip())


def check_allowed(url: str, hosts: Iterable[str], *, surface: str = "dashboard") -> str:
    """``url`` if it is an http(s) URL without credentials on one of ``hosts`` (a host
    entry without a port allows the scheme's default port only); one sentence otherwise
    (:class:`~seamline.core.errors.HostNotAllowedError` for a host not allowed)."""
    hosts = tuple(hosts)
    parts = urlsplit(url.strip())
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    if not hosts:
        raise HostNotAllowedError(
            f"This {surface} reads no URLs: its operator can allow a host with "
            f"--allow-remote-host HOST; until then, upload the file."
        )
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or port is None \
            or not parts.path.strip("/"):  # fmt: skip
        raise InputFileError(
            f"{url!r} is not the URL of a file: give one such as "
            f"https://{hosts[0]}/path/scene.tif."
        )
    if parts.username or parts.password:
        raise InputFileError(
            f"URL {url!r} carries a user name or password: give the URL without them."
        )
    names = {parts.hostname, f"{parts.hostname}:{port}"}
    default = port == _DEFAULT_PORTS[parts.scheme]
    if not any(h in names if ":" in h else (h == parts.hostname and default) for h in hosts):
        raise HostNotAllowedError(
            f"Host {parts.hostname!r} of {url!r} is not one this {surface} may read: use a "
            "URL on an allowed host, or ask the operator to allow it (--allow-remote-host)."
        )
    return url.strip()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs) -> None:
        return None  # the 3xx answer is raised as an HTTPError


def visitor_options(url: str) -> dict[str, str]:
    """GDAL's options for reading a visitor's ``url``: range reads, :data:`VISITOR_TIMEOUT`,
    no retry, and no file but ``url`` itself (no sidecar guessed beside it)."""
    return {**GDAL_REMOTE_OPTIONS, "GDAL_HTTP_TIMEOUT": str(VISITOR_TIMEOUT),
            "GDAL_HTTP_CONNECTTIMEOUT": str(VISITOR_TIMEOUT), "GDAL_HTTP_MAX_RETRY": "0",
            "CPL_VSIL_CURL_ALLOWED_FILENAME": f"/vsicurl/{url}"}  # fmt: skip


def refuse_redirect(url: str) -> None:
    """One byte of ``url``, following no redirect: GDAL follows redirects to any host, so a
    URL on an allowed host that redirects (an open redirect, a short link) is refused here
    before GDAL sees it. Unreachable URLs are one sentence too."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=VISITOR_TIMEOUT):
            pass
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise HostNotAllowedError(
                f"URL {url!r} redirects elsewhere ({exc.code}), which is not followed: give "
                "the final URL of the file."
            ) from None
        raise InputFileError(
            f"URL {url!r} answered {exc.code} {exc.reason}: check the URL."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputFileError(f"URL {url!r} could not be reached ({reason}): check the URL.") \
            from None  # fmt: skip
