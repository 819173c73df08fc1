"""The witness cosigns only checkpoints consistent with the last one it cosigned."""

from __future__ import annotations

from pathlib import Path

import pytest
from auditlog_helpers import ORIGIN, SIGNER, VERIFIERS, events, sql
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetwarden.auditlog.checkpoint import Checkpointer, Witness
from fleetwarden.auditlog.errors import CheckpointError
from fleetwarden.auditlog.note import Ed25519Signer, verify_note
from fleetwarden.auditlog.store import AuditStore
from fleetwarden.auditlog.verify import verify_log


def test_witness_cosigns_growth_and_refuses_a_rewrite(tmp_path: Path) -> None:
    store = AuditStore.open(f"sqlite:///{tmp_path / 'a.db'}")
    w = Witness(
        Ed25519Signer("witness", Ed25519PrivateKey.generate()), VERIFIERS[0], tmp_path / "w.json"
    )
    cp = Checkpointer(store, SIGNER, ORIGIN, witness=w)
    store.append(events(10))
    c1 = cp.make()
    store.append(events(7, start=10))
    c2 = cp.make()
    assert c1 is not None and c2 is not None
    for c in (c1, c2):
        v = verify_note(c.note, VERIFIERS, witnesses=[w.verifier()])
        assert v.cosigned_by[0][0] == "witness"
    assert verify_log(store, VERIFIERS, witnesses=[w.verifier()]).ok
    # an intruder rewrites entry 12 onwards (same length plus one) and asks for a checkpoint
    sql(store, "DELETE FROM audit_checkpoints")
    sql(store, "DELETE FROM audit_entries WHERE seq >= 12")
    sql(store, "DELETE FROM audit_nodes")
    sql(store, "UPDATE audit_meta SET value = '12' WHERE key = 'size'")
    forged = AuditStore(store.engine)
    forged.append(events(6, tag="forged", start=12))
    with pytest.raises(CheckpointError, match="witness refuses"):
        Checkpointer(forged, SIGNER, ORIGIN, witness=w).make()
    # a rolled-back (shorter) log is refused outright
    sql(store, "DELETE FROM audit_entries WHERE seq >= 5")
    sql(store, "UPDATE audit_meta SET value = '5' WHERE key = 'size'")
    with pytest.raises(CheckpointError, match="rolled back"):
        Checkpointer(AuditStore(store.engine), SIGNER, ORIGIN, witness=w).make()
    store.close()
