"""Helpers shared by the audit log tests: build a log with checkpoints, tamper with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from fleetwarden.auditlog.checkpoint import Checkpointer
from fleetwarden.auditlog.note import Ed25519Signer, verifier_for
from fleetwarden.auditlog.store import AuditStore, pending_event
from fleetwarden.events import Activity, api_activity

SIGNER = Ed25519Signer("test-log", Ed25519PrivateKey.generate())
VERIFIERS = [verifier_for(SIGNER)]
ORIGIN = "fleetwarden.test/audit"


def events(n: int, tag: str = "a", start: int = 0) -> list:
    out = []
    for i in range(start, start + n):
        ev = replace(
            api_activity(
                operation="POST /v1/devices",
                activity=Activity.CREATE,
                actor="cli:test",
                message=f"{tag} device {i}",
            ),
            uid=f"{tag}-{i}",
            time=1_700_000_000_000 + i,
        )
        out.append(pending_event(ev.uid, ev.to_ocsf(), logged_at=1_700_000_000_000 + i))
    return out


def build(store: AuditStore, n: int, cps: Sequence[int] = ()) -> Checkpointer:
    """Append n entries, signing a checkpoint at each size in cps (and at n)."""
    cp = Checkpointer(store, SIGNER, ORIGIN)
    done = 0
    items = events(n)
    for size in [*sorted(s for s in cps if 0 < s < n), n]:
        store.append(items[done:size])
        done = size
        cp.make()
    return cp


def sql(store: AuditStore, stmt: str, **params: object) -> None:
    with store.engine.connect().execution_options(write=True) as conn, conn.begin():
        conn.execute(text(stmt), params)
