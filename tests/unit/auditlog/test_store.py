"""The store on SQLite and PostgreSQL: appends, dedupe, proofs, checkpoints, refusals."""

from __future__ import annotations

import pytest
from auditlog_helpers import VERIFIERS, build, events, sql

from fleetwarden.auditlog import merkle
from fleetwarden.auditlog.errors import AuditLogDamagedError
from fleetwarden.auditlog.store import AuditStore, embedded_seq, pending_malformed
from fleetwarden.auditlog.verify import verify_log


def test_append_assigns_contiguous_seqs_and_dedupes(store: AuditStore) -> None:
    items = events(10)
    r1 = store.append(items[:6])
    assert [r.seq for r in r1] == list(range(6))
    # redelivery (at-least-once bus) of 3..5 plus new 6..9, with an in-batch duplicate
    r2 = store.append([*items[3:], items[7]])
    assert [(r.seq, r.duplicate) for r in r2] == [
        (3, True),
        (4, True),
        (5, True),
        (6, False),
        (7, False),
        (8, False),
        (9, False),
        (7, True),
    ]
    assert store.size() == 10
    e = store.entry(4)
    assert e is not None and embedded_seq(e.leaf) == 4
    assert e.record()["event"]["metadata"]["uid"] is not None


def test_root_and_proofs_match_reference(store: AuditStore) -> None:
    items = events(300)
    for k in range(0, 300, 37):
        store.append(items[k : k + 37])
    leaves = [r[2] for r in store.iter_rows()]
    assert [merkle.leaf_hash(r[1]) for r in store.iter_rows()] == leaves
    size, root = store.head()
    assert size == 300 and root == merkle.root_from_leaf_hashes(leaves)
    for i in (0, 1, 15, 16, 255, 256, 299):
        merkle.verify_inclusion(i, 300, leaves[i], store.inclusion_proof(i, 300), root)
        sub = i + 1
        merkle.verify_inclusion(
            i, sub, leaves[i], store.inclusion_proof(i, sub), store.root_at(sub)
        )
    for old in (0, 1, 16, 17, 128, 299, 300):
        merkle.verify_consistency(
            old, 300, store.root_at(old), root, store.consistency_proof(old, 300)
        )
        assert store.root_at(old) == merkle.root_from_leaf_hashes(leaves[:old])


def test_malformed_input_is_recorded_once(store: AuditStore) -> None:
    bad = pending_malformed(b"\xff\xfe not json", "undecodable bytes")
    assert store.append([bad])[0].seq == 0
    assert store.append([bad])[0].duplicate
    rec = store.entry(0).record()  # type: ignore[union-attr]
    assert rec["kind"] == "malformed"
    assert rec["malformed"]["reason"] == "undecodable bytes"
    assert rec["malformed"]["size"] == 11


def test_writer_refuses_to_append_on_a_truncated_log(store: AuditStore) -> None:
    build(store, 40, cps=[20])
    sql(store, "DELETE FROM audit_entries WHERE seq >= 30")
    fresh = AuditStore(store.engine)
    with pytest.raises(AuditLogDamagedError, match="writer committed 40"):
        fresh.append(events(1, "late"))


def test_checkpoints_are_signed_and_stored(store: AuditStore) -> None:
    build(store, 50, cps=[10, 20])
    cps = store.checkpoints()
    assert [c.size for c in cps] == [10, 20, 50]
    assert store.covering_checkpoint(15).size == 20  # type: ignore[union-attr]
    rep = verify_log(store, VERIFIERS)
    assert rep.ok, rep.problems
    assert rep.checkpoints_checked == 3


def test_verify_finds_damage_on_both_databases(store: AuditStore) -> None:
    build(store, 300, cps=[100, 200])
    assert verify_log(store, VERIFIERS).ok
    sql(store, "UPDATE audit_entries SET leaf = :l WHERE seq = 150", l=b'{"forged":1}')
    sql(store, "DELETE FROM audit_entries WHERE seq = 250")
    rep = verify_log(store, VERIFIERS)
    assert rep.first is not None
    assert (rep.first.index, rep.first.kind) == (150, "edited")
    assert (250, "deleted") in [(p.index, p.kind) for p in rep.problems]
