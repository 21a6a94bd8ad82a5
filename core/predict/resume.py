"""Resumable file predictions: finished rows staged on disk, a killed job picks up there.

A GeoTIFF is not readable until it is closed (its directory of blocks is written last), so a
``kill -9`` leaves nothing to continue from. With ``resume``, :func:`~.file.predict_file`
writes the finished rows into a memory-mapped ``.npy`` beside the output
(``.NAME.resume.npy``) and, after each flush, records how many rows are done in a journal
(``.NAME.resume.json``, replaced atomically) together with the job's key: the input's identity,
the model's weights, the tiling, the AOI, the output kind. A later run with the same key
reruns only the tile rows that reach the rows not done: the stream's accumulation for a row
starts from the first tile row that touches it, so the rows come out bit for bit as in an
uninterrupted run. The GeoTIFF (or COG) is written from the staged rows at the end, then the
staging is removed. A journal of another job is replaced (the job starts over). A
``--scheduler`` run stages the rows its client assembles from bands the same way and reruns the
bands that reach the rows not done (:func:`~.bands.bands_to_rerun`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from seamline.core.data.files import atomic_path
from seamline.core.data.remote import is_remote
from seamline.core.diskcache import digest

__all__ = ["StagedRows", "first_tile_row", "job_key"]


def job_key(input_path: str | os.PathLike, parts: dict) -> str:
    """What a staged job depends on: the input's identity (a local file's size and change
    time; a URL as it is) and ``parts`` (the model's fingerprint, tiling, AOI, output kind)."""
    source = str(input_path)
    if not is_remote(input_path):
        stat = Path(input_path).stat()
        source = f"{Path(input_path).resolve()} {stat.st_size} {stat.st_mtime_ns}"
    return digest([source, json.dumps(parts, sort_keys=True, default=str)])


def first_tile_row(starts: np.ndarray, tile: int, row: int) -> int:
    """The first tile row (of a grid whose tile rows start at ``starts``) that adds to raster
    row ``row`` or a later one: a resumed stream starts there."""
    return int(np.searchsorted(starts + tile, row, side="right"))


class StagedRows:
    """The rows of one output staged in ``.NAME.resume.npy`` with its journal (see the module
    docstring); ``done`` rows are on disk. Rows come in order."""

    def __init__(self, output_path: str | os.PathLike, key: str, shape: tuple[int, ...],
                 dtype: np.dtype) -> None:  # fmt: skip
        output = Path(output_path)
        self.stage = output.with_name(f".{output.name}.resume.npy")
        self.journal = self.journal_of(output)
        self.key, self.done = key, 0
        self.rows: np.ndarray | None = None
        try:
            recorded = json.loads(self.journal.read_text())
            if recorded.get("key") == key:
                rows = np.load(self.stage, mmap_mode="r+")
                if rows.shape == tuple(shape) and rows.dtype == dtype:
                    self.rows, self.done = rows, int(recorded["rows_done"])
        except (OSError, ValueError, KeyError):
            pass  # no journal, or another job's, or a damaged one: start over
        if self.rows is None:
            self.rows = np.lib.format.open_memmap(self.stage, mode="w+", dtype=dtype,
                                                  shape=tuple(shape))  # fmt: skip
            self._record()
        self.resumed_from = self.done

    @staticmethod
    def journal_of(output_path: str | os.PathLike) -> Path:
        """The journal of the staged rows of ``output_path`` (present while unfinished)."""
        output = Path(output_path)
        return output.with_name(f".{output.name}.resume.json")

    def put(self, a: int, b: int, out: np.ndarray) -> None:
        """Finished rows ``[a, b)`` (``(rows, width)`` or ``(count, rows, width)``); rows
        done before are skipped."""
        if b <= self.done:
            return
        out = out.reshape(-1, b - a, out.shape[-1])
        view = self.rows if self.rows.ndim == 3 else self.rows[None]
        view[:, self.done : b] = out[:, self.done - a :]
        self.rows.flush()  # the rows on disk before the journal says so
        self.done = b
        self._record()

    def _record(self) -> None:
        with atomic_path(self.journal) as partial:
            partial.write_text(json.dumps({"key": self.key, "rows_done": self.done}))

    def remove(self) -> None:
        """Delete the staging and its journal (the output is written)."""
        self.rows = None
        self.stage.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)
