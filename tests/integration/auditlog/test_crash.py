"""kill -9 the writer during heavy append, several times: every acknowledged entry is
present afterwards, the log verifies, and no published checkpoint is ahead of it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetwarden.auditlog.note import Ed25519Signer, verifier_for
from fleetwarden.auditlog.store import AuditStore
from fleetwarden.auditlog.verify import verify_log

WRITER = Path(__file__).with_name("crash_writer.py")


def _round(
    url: str, keyfile: Path, tag: str, seconds: float
) -> tuple[list[tuple[str, int, int]], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), url, str(keyfile), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: list[tuple[str, int, int]] = []
    notes: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.rstrip("\n").split(" ", 1)
            if parts[0] == "ACK":
                prefix, a, b, _ = parts[1].split(" ")
                acks.append((prefix, int(a), int(b)))
            elif parts[0] == "CP":
                notes.append(parts[1].replace("\\n", "\n"))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    # Kill only once the writer has acknowledged appends AND published a checkpoint, so
    # every round checks both against the crash (a fast machine can otherwise be killed
    # before its first checkpoint is signed).
    deadline = time.monotonic() + 30
    while (not acks or not notes) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert acks, proc.stderr.read() if proc.stderr else "writer produced nothing"
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)  # at an arbitrary point of heavy appending
    proc.wait()
    t.join(timeout=10)
    return acks, notes


@pytest.mark.slow
def test_acknowledged_appends_survive_kill_9(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    keyfile = tmp_path / "k.pem"
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    rng = random.Random(1234)
    all_acks: list[tuple[str, int, int]] = []
    all_notes: list[str] = []
    for r in range(3):
        acks, notes = _round(url, keyfile, f"r{r}", rng.uniform(0.3, 1.5))
        all_acks += acks
        all_notes += notes
        store = AuditStore.open(url)
        try:
            with store.engine.connect() as conn:
                from sqlalchemy import text

                uids = set(conn.execute(text("SELECT uid FROM audit_entries")).scalars())
            missing = [
                f"{p}-{i}" for p, a, b in all_acks for i in range(a, b) if f"{p}-{i}" not in uids
            ]
            assert not missing, (
                f"round {r}: {len(missing)} acknowledged entries lost, e.g. {missing[:3]}"
            )
            rep = verify_log(
                store, [verifier_for(Ed25519Signer("crash-test", key))], anchor_notes=all_notes
            )
            assert rep.ok, rep.problems[:3]
            assert rep.size >= sum(b - a for _, a, b in all_acks)
        finally:
            store.close()
    assert len(all_acks) > 20 and all_notes
