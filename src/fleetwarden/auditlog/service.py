"""The audit log as the CLI, the API and the running component use it.

:func:`open_log` wires the store, the checkpoint key, the witness and the anchors from
settings. The log's origin (its identity in checkpoints) is fixed at first open and kept
in ``audit_meta``, so a host rename never changes it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fleetwarden.auditlog import merkle
from fleetwarden.auditlog.checkpoint import (
    Anchor,
    Checkpointer,
    FileAnchor,
    SyslogAnchor,
    WebhookAnchor,
    Witness,
    default_origin,
)
from fleetwarden.auditlog.config import AuditLogSettings
from fleetwarden.auditlog.errors import CheckpointError, EntryNotFoundError
from fleetwarden.auditlog.keys import make_signer, make_witness
from fleetwarden.auditlog.note import Signer, Verifier, verifier_for
from fleetwarden.auditlog.store import AuditStore, meta
from fleetwarden.auditlog.verify import VerifyReport, verify_log


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


@dataclass
class AuditLog:
    cfg: AuditLogSettings
    data_dir: Path
    store: AuditStore
    signer: Signer
    origin: str
    checkpointer: Checkpointer
    witness: Witness | None

    def close(self) -> None:
        self.store.close()

    def verifiers(self) -> list[Verifier]:
        out = [verifier_for(self.signer)]
        out += [Verifier.parse(k) for k in self.cfg.trusted_keys]
        return out

    def witness_verifiers(self) -> list[Verifier]:
        return [self.witness.verifier()] if self.witness is not None else []

    def file_anchor(self) -> FileAnchor | None:
        if self.cfg.anchor_file is None:
            return None
        return FileAnchor(self.cfg.path(self.data_dir, self.cfg.anchor_file))

    def anchor_notes(self) -> list[str]:
        fa = self.file_anchor()
        return fa.read() if fa is not None else []

    def verify(
        self, extra_notes: Sequence[str] = (), progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        return verify_log(
            self.store,
            self.verifiers(),
            anchor_notes=[*self.anchor_notes(), *extra_notes],
            witnesses=self.witness_verifiers(),
            origin=self.origin,
            progress=progress,
        )

    def prove(self, seq: int, size: int | None = None) -> dict[str, Any]:
        """Inclusion proof of entry ``seq`` in the newest checkpoint (or tree ``size``)."""
        entry = self.store.entry(seq)
        if entry is None:
            raise EntryNotFoundError(f"no audit log entry {seq}")
        note = None
        if size is None:
            cp = self.store.latest_checkpoint()
            if cp is None or cp.size <= seq:
                cp = self.store.covering_checkpoint(seq)
            if cp is None:
                raise CheckpointError(f"entry {seq} is not covered by a checkpoint yet")
            size, note = cp.size, cp.note
        if not 0 <= seq < size or size > self.store.size():
            raise EntryNotFoundError(f"entry {seq} is not in a tree of size {size}")
        proof = self.store.inclusion_proof(seq, size)
        root = merkle.root_from_inclusion(seq, size, entry.leaf_hash, proof)
        return {
            "seq": seq,
            "tree_size": size,
            "leaf": entry.leaf.decode("utf-8", "replace"),
            "leaf_hash": _b64(entry.leaf_hash),
            "inclusion_proof": [_b64(h) for h in proof],
            "root_hash": _b64(root),
            "checkpoint": note,
        }

    def consistency(self, old: int, new: int | None = None) -> dict[str, Any]:
        size = self.store.size()
        new = size if new is None else new
        if not 0 <= old <= new <= size:
            raise EntryNotFoundError(f"no consistency proof from {old} to {new} (log size {size})")
        return {
            "old_size": old,
            "new_size": new,
            "old_root": _b64(self.store.root_at(old)),
            "new_root": _b64(self.store.root_at(new)),
            "consistency_proof": [_b64(h) for h in self.store.consistency_proof(old, new)],
        }


def _origin(store: AuditStore, cfg: AuditLogSettings) -> str:
    with store.engine.connect().execution_options(write=True) as conn, conn.begin():
        have = conn.execute(select(meta.c.value).where(meta.c.key == "origin")).scalar()
        if have is not None:
            if cfg.origin and cfg.origin != have:
                raise CheckpointError(
                    f"auditlog.origin {cfg.origin!r} differs from the log's origin {have!r}"
                )
            return str(have)
        origin = cfg.origin or default_origin()
        conn.execute(meta.insert(), [{"key": "origin", "value": origin}])
        return origin


def open_log(cfg: AuditLogSettings, data_dir: Path, *, create_keys: bool = True) -> AuditLog:
    store = AuditStore.open(cfg.url(data_dir))
    try:
        origin = _origin(store, cfg)
        signer = make_signer(cfg, data_dir, create=create_keys)
        wsigner = make_witness(cfg, data_dir, create=create_keys)
        witness = None
        if wsigner is not None:
            witness = Witness(
                wsigner, verifier_for(signer), data_dir / "auditlog-witness-state.json"
            )
        anchors: list[Anchor] = []
        if cfg.anchor_file is not None:
            anchors.append(FileAnchor(cfg.path(data_dir, cfg.anchor_file)))
        if cfg.anchor_webhook:
            anchors.append(WebhookAnchor(cfg.anchor_webhook))
        if cfg.anchor_syslog:
            anchors.append(SyslogAnchor(cfg.anchor_syslog, cfg.anchor_syslog_ca))
        cp = Checkpointer(store, signer, origin, anchors=anchors, witness=witness)
    except BaseException:
        store.close()
        raise
    return AuditLog(cfg, data_dir, store, signer, origin, cp, witness)


__all__ = ["AuditLog", "open_log"]
