"""SQLite registries: the connection settings, and the WAL checkpointed off the
committing threads (``registry.db.WalCheckpointer``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from fleetwarden.registry import Registry
from fleetwarden.registry.db import (
    SQLITE_CACHE_KIB,
    SQLITE_CHECKPOINT_PAGES,
    SQLITE_MMAP_BYTES,
    WalCheckpointer,
)


def _fill(reg: Registry, rows: int) -> None:
    with reg.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, b BLOB)"))
        conn.execute(text("INSERT INTO filler (b) VALUES (:b)"), [{"b": os.urandom(2000)}] * rows)


def test_sqlite_connections_are_tuned(tmp_path: Path) -> None:
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        with reg.engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "cache_size", "mmap_size", "wal_autocheckpoint")
            }
        assert pragma == {
            "journal_mode": "wal",
            "cache_size": -SQLITE_CACHE_KIB,
            "mmap_size": SQLITE_MMAP_BYTES,
            "wal_autocheckpoint": SQLITE_CHECKPOINT_PAGES,
        }
    finally:
        reg.close()


def test_the_checkpointer_copies_the_log_and_stops_with_the_registry(tmp_path: Path) -> None:
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    cp = reg.checkpointer
    assert cp is not None and cp.running
    _fill(reg, 500)  # about 1 MB: far below the commit-time backstop
    busy, log_frames, copied = cp.checkpoint() or (None, 0, 0)
    assert busy == 0 and log_frames > 200 and copied == log_frames
    reg.close()
    assert not cp.running
    assert cp.checkpoint() is None  # closed: nothing runs any more


def test_the_thread_checkpoints_on_its_own(tmp_path: Path) -> None:
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    assert reg.checkpointer is not None
    reg.checkpointer.close()
    cp = WalCheckpointer(str(tmp_path / "r.db"), interval=0.05)
    cp._thread.start()
    try:
        _fill(reg, 200)
        for _ in range(200):
            if cp.last is not None and cp.last[1] > 0 and cp.last[2] == cp.last[1]:
                break
            cp._stop.wait(0.05)
        assert cp.last is not None and cp.last[1] > 0 and cp.last[2] == cp.last[1]
    finally:
        cp.close()
        reg.close()


def test_the_thread_ends_when_the_database_is_gone(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    Registry.open(f"sqlite:///{db}").close()
    cp = WalCheckpointer(str(db), interval=0.02)
    cp._thread.start()
    try:
        assert cp.running
        db.unlink()
        cp._thread.join(timeout=5)
        assert not cp.running
        assert not db.exists()  # and it did not create it again
    finally:
        cp.close()


def test_a_failed_checkpoint_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = WalCheckpointer(str(tmp_path / "gone.db"))
    with caplog.at_level(logging.WARNING, logger="fleetwarden.registry.db"):
        assert cp.checkpoint() is None
        assert cp.checkpoint() is None
    assert cp.failures == 2
    # one warning for the streak, not one per attempt
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "WAL checkpoint of" in caplog.text
    assert not (tmp_path / "gone.db").exists()  # never creates an empty database
    Registry.open(f"sqlite:///{tmp_path / 'gone.db'}").close()  # the database is back
    with caplog.at_level(logging.INFO, logger="fleetwarden.registry.db"):
        assert cp.checkpoint() is not None
    assert "works again" in caplog.records[-1].getMessage()
    cp.close()


def test_odd_characters_in_the_path(tmp_path: Path) -> None:
    # what a file: URI would misread: a space, '#' (fragment), '%' (escape)
    d = tmp_path / "a dir #odd %chars"
    d.mkdir()
    reg = Registry.open(f"sqlite:///{d / 'r.db'}")
    try:
        assert reg.checkpointer is not None
        assert reg.checkpointer.path == str(d / "r.db")
        _fill(reg, 50)
        last = reg.checkpointer.checkpoint()
        assert last is not None and last[1] > 0 and last[2] == last[1]
    finally:
        reg.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_no_checkpointer_without_a_file(url: str) -> None:
    reg = Registry.open(url)
    try:
        assert reg.checkpointer is None
    finally:
        reg.close()
