"""Drift history: an embedded SQLite database, one row per (scene time, feature, metric).

SQLite (the standard library's :mod:`sqlite3`) gives what the history needs without a server:
the database is created in WAL mode and opened with ``synchronous=FULL``; every check is
written in one ``BEGIN IMMEDIATE`` transaction (so a crash, an exception or a killed process
never leaves a half-written scene and never loses a committed one); concurrent writers wait
for each other up to :data:`BUSY_TIMEOUT_S`. The file carries its own identity: ``PRAGMA
application_id`` marks it as Seamline's and ``PRAGMA user_version`` is the schema version. A
file that is not SQLite, or an SQLite database of another application, is a
:class:`~core.errors.HistoryError` and is never touched, let alone replaced.

Tables: ``checks`` (one row per checked scene: time, scene, baseline fingerprint, score,
drift flag, drift map path) and ``metrics`` (one row per feature and metric of a check, with
the threshold applied).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seamline.core.data.files import check_output_path
from seamline.core.errors import HistoryError, InputFileError, InvalidArgumentError

__all__ = ["History", "parse_time", "COLUMNS", "APPLICATION_ID", "SCHEMA_VERSION", "BUSY_TIMEOUT_S"]

APPLICATION_ID = 0x53454D4C  # "SEML"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's transaction before giving up."""

_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA = (
    """CREATE TABLE checks (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        scene TEXT NOT NULL,
        baseline TEXT NOT NULL,
        score REAL NOT NULL,
        drift INTEGER NOT NULL,
        map_path TEXT,
        recorded TEXT NOT NULL
    )""",
    """CREATE TABLE metrics (
        check_id INTEGER NOT NULL REFERENCES checks(id) ON DELETE CASCADE,
        feature TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        threshold REAL,
        UNIQUE (check_id, feature, metric)
    )""",
    "CREATE INDEX checks_by_time ON checks(time)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
COLUMNS = ("time", "scene", "feature", "metric", "value", "threshold", "drift", "score",
            "baseline", "map_path", "check_id")  # fmt: skip


def parse_time(value: str | dt.datetime) -> str:
    """An ISO 8601 time as stored in the history (aware times in UTC), else one sentence."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidArgumentError(
                f"Time {value!r} is not ISO 8601: write it like 2024-07-01T10:30:00Z."
            ) from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.isoformat()


class History:
    """A drift history database; create it with ``create=True`` (the default) if missing.

    Use as a context manager, or call :meth:`close`. Each :meth:`add` is one transaction.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        """Open (or create) the history at ``path``, checking it is Seamline's."""
        self.path = Path(path)
        self._name = str(self.path)
        if self.path.is_dir():
            raise HistoryError(f"History path {self._name!r} is a folder: pass a file.")
        if not self.path.exists():
            if not create:
                raise InputFileError(
                    f"History database {self._name!r} does not exist: record a check into it "
                    "with `seamline drift check --db` first."
                )
            self._create()
        self._check_header()
        with self._errors():
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            with self._errors():
                self._check_identity()  # before any write: a foreign file stays as it is
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            self._conn.close()
            raise

    def _create(self) -> None:
        """Make the empty database beside ``path`` and hard-link it into place.

        No process ever sees a half-made database, and when two processes create it at once
        the first link wins and both use it. WAL mode is set here, once: it is stored in the
        file, and switching an open database to WAL fails at once (no busy wait) when another
        connection is doing the same.
        """
        check_output_path(self.path)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.part")
        try:
            with self._errors():
                conn = sqlite3.connect(tmp, isolation_level=None)
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                finally:
                    conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)

    def _check_header(self) -> None:
        """The file must start with SQLite's magic string."""
        with self.path.open("rb") as fh:
            header = fh.read(len(_SQLITE_HEADER))
        if header != _SQLITE_HEADER:
            raise HistoryError(
                f"File {self._name!r} is not a Seamline drift history (not an SQLite database): "
                "it was left untouched; pass another --db path."
            )

    def _check_identity(self) -> None:
        """One sentence unless the database carries Seamline's application id and schema."""
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise HistoryError(
                f"File {self._name!r} is an SQLite database of another application, not a "
                "Seamline drift history: it was left untouched; pass another --db path."
            )
        if version != SCHEMA_VERSION:
            raise HistoryError(
                f"History database {self._name!r} has schema version {version}, but this "
                f"Seamline reads version {SCHEMA_VERSION}: use the Seamline that wrote it."
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite errors as one sentence naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise HistoryError(
                    f"History database {self._name!r} stayed locked by another writer for "
                    f"{BUSY_TIMEOUT_S:g} s: try again when it has finished."
                ) from None
            raise HistoryError(f"History database {self._name!r} failed: {exc}.") from None
        except sqlite3.DatabaseError as exc:
            raise HistoryError(
                f"History database {self._name!r} is corrupt ({exc}): it was left untouched; "
                "restore it from a backup or pass another --db path."
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any exception."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def add(
        self,
        result: Any,
        *,
        time: str | dt.datetime,
        scene: str = "",
        map_path: str | os.PathLike | None = None,
    ) -> int:
        """Record one check (a :class:`seamline.core.monitor.check.DriftResult`) in one transaction;
        its id.

        ``result`` needs ``score``, ``drift``, ``baseline`` and ``to_records()`` (rows with
        ``feature``, ``metric``, ``value``, ``threshold``).
        """
        stamp = parse_time(time)
        recorded = dt.datetime.now(dt.UTC).isoformat()
        with self._errors(), self._transaction() as conn:
            check_id = conn.execute(
                "INSERT INTO checks (time, scene, baseline, score, drift, map_path, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stamp, str(scene), str(result.baseline), float(result.score),
                 int(bool(result.drift)), str(map_path) if map_path else None, recorded),
            ).lastrowid  # fmt: skip
            conn.executemany(
                "INSERT INTO metrics (check_id, feature, metric, value, threshold) "
                "VALUES (?, ?, ?, ?, ?)",
                ((check_id, r["feature"], r["metric"], r["value"], r["threshold"])
                 for r in result.to_records()),
            )  # fmt: skip
        return int(check_id)

    def records(self) -> list[dict[str, Any]]:
        """Every metric row, oldest scene first: time, scene, feature, metric, value, ..."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT c.time, c.scene, m.feature, m.metric, m.value, m.threshold, "
                "CASE WHEN m.threshold IS NULL THEN NULL ELSE m.value > m.threshold END, "
                "c.score, c.baseline, c.map_path, c.id "
                "FROM checks c JOIN metrics m ON m.check_id = c.id "
                "ORDER BY c.time, c.id, m.rowid"
            ).fetchall()
        out = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
        for row in out:
            row["drift"] = None if row["drift"] is None else bool(row["drift"])
        return out

    def frame(self) -> Any:
        """:meth:`records` as a pandas DataFrame, ``time`` in UTC (naive times read as UTC)."""
        import pandas as pd

        frame = pd.DataFrame(self.records(), columns=list(COLUMNS))
        frame["time"] = pd.to_datetime(frame["time"], format="ISO8601", utc=True)
        return frame

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
