"""A local HTTP server for remote-raster tests and benchmarks: serves one folder on
127.0.0.1, honours ``Range: bytes=a-b`` requests (as object stores do) and counts the bytes it
sends, so a test can say how much of a file a read fetched."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

__all__ = ["RangeServer", "serving"]

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: RangeServer

    def do_HEAD(self) -> None:  # noqa: N802 -- the http.server API
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        if self.path in self.server.redirects:  # e.g. an open redirect of an allowed host
            self.send_response(302)
            self.send_header("Location", self.server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        match = _RANGE.match(self.headers.get("Range", ""))
        start, end = (0, size - 1)
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read(end - start + 1)
            self.wfile.write(data)
            with self.server.lock:
                self.server.bytes_sent += len(data)

    def log_message(self, *args: object) -> None:
        pass


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves ``folder``; ``url(name)`` gives a file's URL, ``bytes_sent`` counts the bytes;
    ``redirects`` maps a path (``/name``) to the URL it redirects to (302)."""

    daemon_threads = True

    def __init__(self, folder: str | Path) -> None:
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.redirects: dict[str, str] = {}

    def url(self, name: str) -> str:
        """The URL of file ``name`` in the served folder."""
        return f"http://{self.host}/{name}"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as an allow-list names it."""
        return f"127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving(folder: str | Path) -> Iterator[RangeServer]:
    """A :class:`RangeServer` on ``folder``, running on a thread; stopped on exit."""
    server = RangeServer(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
