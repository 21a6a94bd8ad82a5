"""The drift history: durable, concurrent, and never confused with someone else's file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from dataclasses import dataclass

import pytest

from seamline.core.errors import HistoryError, InputFileError, InvalidArgumentError
from seamline.core.monitor.check import DriftResult, MetricResult
from seamline.core.monitor.history import APPLICATION_ID, SCHEMA_VERSION, History, parse_time

FEATURES = ("blue", "red", "ndvi")


def result(score: float) -> DriftResult:
    metrics = tuple(
        MetricResult(f, m, score * (i + 1) / 10, 0.5)
        for i, f in enumerate(FEATURES)
        for m in ("psi", "ks")
    )
    return DriftResult(metrics, score, score > 1, "red ks", "abc123", "leave-one-out")


@dataclass(frozen=True, eq=False)
class Interrupted(DriftResult):
    """A result whose rows stop half-way: by an exception, or by killing the process."""

    kill: bool = False

    def to_records(self):
        rows = super().to_records()
        yield from rows[:3]
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("disk on fire")


def interrupted(score: float, *, kill: bool) -> Interrupted:
    r = result(score)
    return Interrupted(r.metrics, r.score, r.drift, r.driver, r.baseline, r.calibration, kill=kill)


def write_scenes(path: str, writer: int, count: int, barrier=None, then_crash: bool = False):
    """Child process: record ``count`` scenes, then optionally die inside a transaction."""
    if barrier is not None:
        barrier.wait()
    with History(path) as history:
        for i in range(count):
            history.add(
                result(i / 10), time=f"2024-01-{i + 1:02d}T00:00:0{writer}", scene=f"w{writer}"
            )
        if then_crash:
            history.add(interrupted(9.0, kill=True), time="2024-02-01", scene="doomed")


def checks(path) -> list[tuple]:
    with History(path, create=False) as history:
        rows = history.records()
    return sorted({(r["check_id"], r["scene"], r["time"]) for r in rows})


def test_round_trip_in_time_order(tmp_path):
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        later = history.add(result(2.0), time="2024-03-01T10:00:00+02:00", scene="b.tif",
                            map_path=tmp_path / "map.tif")  # fmt: skip
        earlier = history.add(result(0.5), time="2024-02-01", scene="a.tif")
    with History(path, create=False) as history:
        rows = history.records()
        frame = history.frame()
    assert len(rows) == 2 * (1 + 2 * len(FEATURES))
    assert [r["check_id"] for r in rows[:7]] == [earlier] * 7 and rows[7]["check_id"] == later
    assert rows[7]["time"] == "2024-03-01T08:00:00+00:00"  # aware times are stored in UTC
    first = rows[0]
    assert first["feature"] == "scene" and first["metric"] == "score" and first["value"] == 0.5
    assert first["map_path"] is None and rows[7]["map_path"] == str(tmp_path / "map.tif")
    expected = result(2.0).to_records()
    assert [(r["feature"], r["metric"], r["value"], r["threshold"]) for r in rows[7:]] == [
        (e["feature"], e["metric"], e["value"], e["threshold"]) for e in expected
    ]
    assert [r["drift"] for r in rows[7:]] == [e["value"] > e["threshold"] for e in expected]
    assert list(frame.columns)[:4] == ["time", "scene", "feature", "metric"]
    assert len(frame) == len(rows) and str(frame["time"].dt.tz) == "UTC"


def test_file_identity_wal_and_schema_version(tmp_path):
    path = tmp_path / "history.sqlite"
    History(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_foreign_or_corrupt_files_are_errors_and_left_untouched(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("these are my notes, not a database\n")
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute("INSERT INTO accounts (owner) VALUES ('me')")
    conn.commit()
    conn.close()
    newer = tmp_path / "newer.sqlite"
    History(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    cases = {
        text: "not an SQLite database",
        empty: "not an SQLite database",
        other: "another application",
        newer: "version 99",
    }
    for path, fragment in cases.items():
        before = path.read_bytes()
        with pytest.raises(HistoryError, match=fragment) as info:
            History(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert path.read_bytes() == before
    with pytest.raises(InputFileError, match="does not exist"):
        History(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(HistoryError, match="is a folder"):
        History(tmp_path)


def test_damaged_pages_are_a_clear_error(tmp_path):
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        for i in range(200):
            history.add(result(i / 100), time=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}")
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096  # closed cleanly: the WAL was checkpointed into the file
    data[4096:-4096] = b"\xa5" * (len(data) - 8192)
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match="corrupt"):
        with History(path, create=False) as history:
            history.records()


def test_an_exception_mid_scene_rolls_back_only_that_scene(tmp_path):
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        history.add(result(0.3), time="2024-01-01")
        with pytest.raises(RuntimeError, match="disk on fire"):
            history.add(interrupted(5.0, kill=False), time="2024-01-02")
        history.add(result(0.4), time="2024-01-03")
        rows = history.records()
    assert sorted({r["time"] for r in rows}) == ["2024-01-01T00:00:00", "2024-01-03T00:00:00"]
    assert len(rows) == 2 * (1 + 2 * len(FEATURES))


def test_a_process_killed_mid_transaction_loses_nothing_committed(tmp_path):
    path = str(tmp_path / "history.sqlite")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=write_scenes, args=(path, 1, 3), kwargs={"then_crash": True})
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    found = checks(path)
    assert [scene for _, scene, _ in found] == ["w1"] * 3
    with History(path) as history:  # still writable after the crash
        history.add(result(0.1), time="2024-03-01", scene="after")
        rows = history.records()
    assert len(rows) == 4 * (1 + 2 * len(FEATURES))
    assert "doomed" not in {r["scene"] for r in rows}


def test_two_writer_processes_land_every_row(tmp_path):
    path = str(tmp_path / "history.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    writers = [ctx.Process(target=write_scenes, args=(path, w, 15, barrier)) for w in (1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    with History(path, create=False) as history:
        rows = history.records()
    assert len(rows) == 30 * (1 + 2 * len(FEATURES))
    per_scene = {}
    for r in rows:
        per_scene.setdefault((r["scene"], r["time"]), []).append(r["metric"])
    assert len(per_scene) == 30 and all(len(v) == 7 for v in per_scene.values())


def test_times_must_be_iso_8601():
    assert parse_time("2024-07-01T10:30:00Z") == "2024-07-01T10:30:00+00:00"
    assert parse_time("2024-07-01") == "2024-07-01T00:00:00"
    with pytest.raises(InvalidArgumentError, match="not ISO 8601"):
        parse_time("July 1st")
