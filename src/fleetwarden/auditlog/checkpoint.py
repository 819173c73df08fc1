"""Signed checkpoints and their publication to external anchors.

A checkpoint commits to the whole log up to its size. It is signed (Ed25519 signed note),
optionally cosigned by a witness that first checks a consistency proof from the last
checkpoint it saw, stored in ``audit_checkpoints`` and published to every configured
anchor: a file outside the database, an HTTP webhook, a syslog collector. Rolling the
database back, truncating it or rewriting history is then detected by comparing the log
with the newest checkpoint any anchor holds (``fleetwarden log verify --anchor``).

Invariants: a checkpoint is stored before it is published (so the log never claims less
than an anchor); publishing failures are logged and retried with the next checkpoint,
never fatal to the writer (the newest checkpoint supersedes every older one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from fleetwarden._internal.files import atomic_write
from fleetwarden.auditlog import merkle
from fleetwarden.auditlog.errors import CheckpointError
from fleetwarden.auditlog.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    Signer,
    Verifier,
    cosign,
    parse_note,
    sign_note,
    verifier_for,
    verify_note,
)
from fleetwarden.auditlog.siem import SyslogSender, syslog_message
from fleetwarden.auditlog.store import AuditStore, StoredCheckpoint

log = logging.getLogger(__name__)


def default_origin() -> str:
    return f"fleetwarden/{socket.gethostname()}/audit"


class Anchor(Protocol):
    name: str

    def publish(self, cp: StoredCheckpoint) -> None: ...


@dataclass
class FileAnchor:
    """Appends every checkpoint to a JSON-lines file (fsync'd). Keep it on another disk or
    host (NFS, a WORM bucket mount) for it to be worth anything against a root intruder."""

    path: Path
    name: str = "file"

    def publish(self, cp: StoredCheckpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"size": cp.size, "root_hash": cp.root.hex(), "note": cp.note})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[str]:
        """Every note the file holds (raise CheckpointError on a damaged line)."""
        if not self.path.exists():
            return []
        notes: list[str] = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                notes.append(str(obj["note"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{self.path} line {n} is not a checkpoint record") from exc
        return notes


@dataclass
class WebhookAnchor:
    url: str
    name: str = "webhook"
    timeout: float = 5.0

    def publish(self, cp: StoredCheckpoint) -> None:
        r = httpx.post(
            self.url,
            content=cp.note.encode(),
            headers={
                "Content-Type": "text/plain; charset=utf-8",
                "X-Checkpoint-Size": str(cp.size),
            },
            timeout=self.timeout,
        )
        r.raise_for_status()


@dataclass
class SyslogAnchor:
    url: str
    ca_file: Path | None = None
    name: str = "syslog"

    def publish(self, cp: StoredCheckpoint) -> None:
        msg = syslog_message(
            cp.note.replace("\n", "\\n"),
            severity=5,
            timestamp_ms=cp.created_at,
            hostname=socket.gethostname(),
            msgid="checkpoint",
            sd={"fwcheckpoint@32473": {"size": cp.size, "root": cp.root.hex()}},
        )
        with SyslogSender(self.url, ca_file=self.ca_file) as s:
            s.send(msg)


class Witness:
    """A second key that cosigns a checkpoint only if it is consistent with the last one
    it cosigned (its state file records that one). Run it on another host to make a fork
    need two compromised machines; in-process it still pins history across DB restores."""

    def __init__(self, signer: Signer, log_verifier: Verifier, state_file: Path) -> None:
        self.signer = signer
        self.log_verifier = log_verifier
        self.state_file = state_file

    def _state(self) -> tuple[int, bytes]:
        if not self.state_file.exists():
            return 0, merkle.EMPTY_ROOT
        try:
            obj = json.loads(self.state_file.read_text())
            return int(obj["size"]), bytes.fromhex(obj["root_hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"witness state {self.state_file} is damaged") from exc

    def cosign(self, note_text: str, proof: Sequence[bytes]) -> str:
        v = verify_note(note_text, [self.log_verifier])
        size, root = self._state()
        cp = v.checkpoint
        try:
            merkle.verify_consistency(size, cp.size, root, cp.root, proof)
        except merkle.ProofError as exc:
            raise CheckpointError(
                f"witness refuses checkpoint {cp.size}: not consistent with {size} ({exc})"
            ) from exc
        out = cosign(v.note, self.signer).text()
        atomic_write(
            self.state_file,
            json.dumps({"size": cp.size, "root_hash": cp.root.hex()}).encode(),
            mode=0o600,
        )
        return out

    def verifier(self) -> Verifier:
        return verifier_for(self.signer, ALG_COSIGNATURE_V1)


class Checkpointer:
    def __init__(
        self,
        store: AuditStore,
        signer: Signer,
        origin: str,
        *,
        anchors: Sequence[Anchor] = (),
        witness: Witness | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.anchors = list(anchors)
        self.witness = witness
        self.failures: dict[str, str] = {}

    def make(self, *, publish: bool = True) -> StoredCheckpoint | None:
        """Sign the current head if it grew since the last checkpoint; return the newest."""
        latest = self.store.latest_checkpoint()
        size, root = self.store.head()
        if size == 0 or (latest is not None and latest.size >= size):
            return latest
        text = sign_note(Checkpoint(self.origin, size, root).body(), self.signer).text()
        if self.witness is not None:
            wsize, _ = self.witness._state()
            if wsize > size:
                raise CheckpointError(
                    f"witness has seen size {wsize}, the log only has {size}: rolled back?"
                )
            text = self.witness.cosign(text, self.store.consistency_proof(wsize, size))
        self.store.add_checkpoint(size, root, text)
        cp = StoredCheckpoint(size, root, text, int(time.time() * 1000))
        if publish:
            self.publish(cp)
        return cp

    def publish(self, cp: StoredCheckpoint) -> None:
        for a in self.anchors:
            try:
                a.publish(cp)
            except Exception as exc:  # an anchor down must not stop the log
                self.failures[a.name] = str(exc)
                log.warning("checkpoint %d not published to %s anchor: %s", cp.size, a.name, exc)
            else:
                self.failures.pop(a.name, None)


def read_notes(path: Path) -> list[str]:
    """Notes from a file: a FileAnchor JSON-lines file or one plain signed note."""
    data = path.read_text()
    if data.lstrip().startswith("{"):
        return FileAnchor(path).read()
    with contextlib.suppress(CheckpointError):
        parse_note(data)
        return [data]
    raise CheckpointError(f"{path} holds neither a signed note nor checkpoint records")
