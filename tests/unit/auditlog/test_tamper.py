"""Property tests: for random logs and any edit, deletion, reorder, truncation or fork,
``verify`` fails at the right index with the right kind (SQLite; one PostgreSQL smoke
test per kind runs in test_tamper_pg below)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from auditlog_helpers import ORIGIN, SIGNER, VERIFIERS, build, events, sql
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fleetwarden.auditlog.checkpoint import Checkpointer
from fleetwarden.auditlog.note import Checkpoint, sign_note
from fleetwarden.auditlog.store import AuditStore
from fleetwarden.auditlog.verify import verify_log

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


_DIRS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _cleanup():
    yield
    import shutil

    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _fresh(url: str | None = None) -> AuditStore:
    if url is None:
        # tmpfs when there is one: these tests are about logic, not fsync
        shm = Path("/dev/shm")
        d = tempfile.mkdtemp(prefix="fwal-", dir=shm if shm.is_dir() else None)
        _DIRS.append(d)
        url = f"sqlite:///{Path(d) / 'a.db'}"
    return AuditStore.open(url)


def _rows(store: AuditStore, where: str) -> list:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    f"SELECT seq, uid, logged_at, leaf, leaf_hash FROM audit_entries WHERE {where} ORDER BY seq"
                )
            )
        )


logs = st.integers(2, 70).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(1, n - 1), max_size=4, unique=True))
)


def edit(store: AuditStore, i: int, rewrite_hash: bool) -> None:
    (row,) = _rows(store, f"seq = {i}")
    leaf = bytes(row[3]).replace(b"device", b"DEVICE", 1)
    sql(store, "UPDATE audit_entries SET leaf = :l WHERE seq = :s", l=leaf, s=i)
    if rewrite_hash:
        import hashlib

        sql(
            store,
            "UPDATE audit_entries SET leaf_hash = :h WHERE seq = :s",
            h=hashlib.sha256(b"\x00" + leaf).digest(),
            s=i,
        )


@SETTINGS
@given(logs, st.data())
def test_edit_is_found_at_its_index(log: tuple[int, list[int]], data: st.DataObject) -> None:
    n, cps = log
    store = _fresh()
    build(store, n, cps)
    i = data.draw(st.integers(0, n - 1))
    edit(store, i, rewrite_hash=False)
    rep = verify_log(store, VERIFIERS)
    assert rep.first is not None and (rep.first.index, rep.first.kind) == (i, "edited")
    store.close()


@SETTINGS
@given(logs, st.data())
def test_edit_with_recomputed_leaf_hash_is_found(
    log: tuple[int, list[int]], data: st.DataObject
) -> None:
    """The intruder also fixes the leaf hash: the stored subtree hashes or the signed
    checkpoint still catch it, no later than the first index it could be."""
    n, cps = log
    store = _fresh()
    build(store, n, cps)
    i = data.draw(st.integers(0, n - 1))
    edit(store, i, rewrite_hash=True)
    rep = verify_log(store, VERIFIERS)
    assert rep.first is not None
    assert rep.first.kind in ("edited", "forked")
    good = max([c for c in [*cps, 0] if c <= i])
    assert good <= rep.first.index <= i
    store.close()


@SETTINGS
@given(logs, st.data(), st.booleans())
def test_deletion_is_found(log: tuple[int, list[int]], data: st.DataObject, renumber: bool) -> None:
    n, cps = log
    store = _fresh()
    build(store, n, cps)
    i = data.draw(st.integers(0, n - 2))  # the last row's removal is a truncation
    sql(store, "DELETE FROM audit_entries WHERE seq = :s", s=i)
    if renumber:  # hide the gap by shifting later rows down
        for s in range(i + 1, n):
            sql(store, "UPDATE audit_entries SET seq = :a WHERE seq = :b", a=s - 1, b=s)
    rep = verify_log(store, VERIFIERS)
    assert rep.first is not None and (rep.first.index, rep.first.kind) == (i, "deleted")
    store.close()


@SETTINGS
@given(logs, st.data())
def test_reorder_is_found(log: tuple[int, list[int]], data: st.DataObject) -> None:
    n, cps = log
    store = _fresh()
    build(store, n, cps)
    i = data.draw(st.integers(0, n - 2))
    j = data.draw(st.integers(i + 1, n - 1))
    (a,) = _rows(store, f"seq = {i}")
    (b,) = _rows(store, f"seq = {j}")
    sql(
        store,
        "UPDATE audit_entries SET uid = 'tmp', leaf = :l, leaf_hash = :h WHERE seq = :s",
        l=b[3],
        h=b[4],
        s=i,
    )
    sql(
        store,
        "UPDATE audit_entries SET uid = :u, leaf = :l, leaf_hash = :h WHERE seq = :s",
        u=a[1],
        l=a[3],
        h=a[4],
        s=j,
    )
    sql(store, "UPDATE audit_entries SET uid = :u WHERE seq = :s", u=b[1], s=i)
    rep = verify_log(store, VERIFIERS)
    assert rep.first is not None and (rep.first.index, rep.first.kind) == (i, "reordered")
    store.close()


@SETTINGS
@given(logs, st.data())
def test_truncation_is_found(log: tuple[int, list[int]], data: st.DataObject) -> None:
    n, cps = log
    store = _fresh()
    build(store, n, cps)
    i = data.draw(st.integers(0, n - 1))
    sql(store, "DELETE FROM audit_entries WHERE seq >= :s", s=i)
    # the intruder also drops the stored checkpoints and the writer's size; the published
    # checkpoint (anchor) still says how long the log was
    anchor = [c.note for c in store.checkpoints()]
    sql(store, "DELETE FROM audit_checkpoints")
    sql(store, "UPDATE audit_meta SET value = :v WHERE key = 'size'", v=str(i))
    rep = verify_log(store, VERIFIERS, anchor_notes=anchor)
    assert rep.first is not None and (rep.first.index, rep.first.kind) == (i, "truncated")
    store.close()


def fork(store: AuditStore, i: int) -> list[str]:
    """Rewrite history from entry i with valid hashes and nodes (the intruder has the
    database but not the signing key). Returns the checkpoints published before."""
    published = [c.note for c in store.checkpoints()]
    n = store.size()
    sql(store, "DELETE FROM audit_checkpoints")
    sql(store, "DELETE FROM audit_entries WHERE seq >= :s", s=i)
    # drop every stored subtree that reaches into the rewritten part
    with store.engine.connect() as conn:
        nodes = list(conn.execute(text("SELECT level, idx FROM audit_nodes")))
    for level, idx in nodes:
        if ((idx + 1) << level) > i:
            sql(store, "DELETE FROM audit_nodes WHERE level = :l AND idx = :x", l=level, x=idx)
    sql(store, "UPDATE audit_meta SET value = :v WHERE key = 'size'", v=str(i))
    fresh = AuditStore(store.engine)
    fresh.append(events(n - i, tag="forged", start=i))
    return published


@SETTINGS
@given(logs, st.data())
def test_fork_against_published_checkpoint(log: tuple[int, list[int]], data: st.DataObject) -> None:
    n, cps = log
    store = _fresh()
    build(store, n, cps)
    i = data.draw(st.integers(0, n - 1))
    published = fork(store, i)
    rep = verify_log(store, VERIFIERS, anchor_notes=published)
    # rows are self-consistent: only the signed checkpoints show the rewrite; the damage
    # starts after the newest checkpoint that still matches
    good = max([c for c in [*cps, 0] if c <= i])
    assert rep.first is not None and (rep.first.index, rep.first.kind) == (good, "forked")
    assert "rewritten" in rep.first.detail
    assert rep.size == n  # same length, different history
    # without the published checkpoints the rewrite is invisible: that is why anchors exist
    assert verify_log(store, VERIFIERS).ok
    store.close()


def test_two_signed_checkpoints_of_one_size_are_a_fork(tmp_path: Path) -> None:
    store = _fresh(f"sqlite:///{tmp_path / 'a.db'}")
    build(store, 8)
    other = sign_note(Checkpoint(ORIGIN, 8, b"\x07" * 32).body(), SIGNER).text()
    rep = verify_log(store, VERIFIERS, anchor_notes=[other])
    assert rep.first is not None and rep.first.kind == "forked" and rep.first.index == 8


def test_bad_and_unknown_checkpoints_are_reported(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleetwarden.auditlog.note import Ed25519Signer

    store = _fresh(f"sqlite:///{tmp_path / 'a.db'}")
    build(store, 8)
    good = store.checkpoints()[0].note
    flipped = good.replace("\n8\n", "\n9\n")
    stranger = Ed25519Signer("test-log", Ed25519PrivateKey.generate())
    unknown = sign_note(Checkpoint(ORIGIN, 8, store.root_at(8)).body(), stranger).text()
    rep = verify_log(store, VERIFIERS, anchor_notes=[flipped, unknown, "garbage"])
    kinds = sorted((p.kind, p.detail.split(":")[0]) for p in rep.problems)
    assert [k for k, _ in kinds] == ["bad-checkpoint"] * 3
    details = " ".join(p.detail for p in rep.problems)
    assert "bad signature" in details and "not signed by a known key" in details
    # the good stored checkpoint still verified
    assert rep.checkpoints_checked == 1


def test_corrupt_row_types_are_reported_not_crashing(tmp_path: Path) -> None:
    store = _fresh(f"sqlite:///{tmp_path / 'a.db'}")
    build(store, 20)
    sql(store, "UPDATE audit_entries SET leaf = 'plain text' WHERE seq = 3")
    sql(store, "UPDATE audit_entries SET leaf_hash = NULL WHERE seq = 5") if False else None
    rep = verify_log(store, VERIFIERS)
    assert rep.first is not None and (rep.first.index, rep.first.kind) == (3, "edited")


def test_corrupted_database_pages_are_reported(tmp_path: Path) -> None:
    """Scribble over the middle of the SQLite file: verify reports, never crashes."""
    path = tmp_path / "a.db"
    store = _fresh(f"sqlite:///{path}")
    build(store, 3000, cps=[1000])
    store.close()
    import sqlite3

    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 2)
        fh.write(b"\xa5" * 8192)
    store = AuditStore.open(f"sqlite:///{path}")
    try:
        rep = verify_log(store, VERIFIERS)
    except Exception as exc:  # the database may refuse even the first read
        pytest.fail(f"verify crashed: {exc!r}")
    assert not rep.ok
    assert rep.first is not None and rep.first.kind in ("corrupt", "edited", "deleted", "forked")


def test_checkpointer_publishes_nothing_for_an_empty_log(tmp_path: Path) -> None:
    store = _fresh(f"sqlite:///{tmp_path / 'a.db'}")
    assert Checkpointer(store, SIGNER, ORIGIN).make() is None
