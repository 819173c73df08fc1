"""A writer process for the crash test: producers append through group commit and print
what was acknowledged; checkpoints are signed now and then and printed too."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fleetwarden.auditlog.checkpoint import Checkpointer
from fleetwarden.auditlog.note import Ed25519Signer
from fleetwarden.auditlog.store import AuditStore, pending_event
from fleetwarden.auditlog.writer import GroupCommitter

url, keyfile, tag = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
key = serialization.load_pem_private_key(keyfile.read_bytes(), None)
store = AuditStore.open(url)
committer = GroupCommitter(store, batch_max=2000)
committer.start()
cp = Checkpointer(store, Ed25519Signer("crash-test", key), "crash/test")  # type: ignore[arg-type]
out_lock = threading.Lock()


def say(line: str) -> None:
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def producer(p: int) -> None:
    n = 0
    while True:
        items = [
            pending_event(f"{tag}-{p}-{n + i}", {"class_uid": 6003, "message": f"e{n + i}", "p": p})
            for i in range(50)
        ]
        res = committer.submit(items).result()
        say(f"ACK {tag}-{p} {n} {n + 50} {max(r.seq for r in res)}")
        n += 50


for p in range(4):
    threading.Thread(target=producer, args=(p,), daemon=True).start()
while True:
    import time

    time.sleep(0.05)
    c = cp.make(publish=False)
    if c is not None:
        say("CP " + c.note.replace("\n", "\\n"))
