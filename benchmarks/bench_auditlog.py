"""Audit log (control C7): durable append, full verification, inclusion proofs.

Targets (issue [auditlog]) on a 2-core machine:
- durable append, batched: at least 50,000 events/s (SQLite synchronous=FULL: every
  commit is fsync'd; group commit through the writer thread);
- full verification of 1,000,000 entries: at most 10 s;
- inclusion proof at 1,000,000 entries: under 1 ms.

Baselines measured in the same run (the machine is shared and noisy):
- plain SQLite executemany of the same leaf bytes into an index-free table, same
  pragmas and batch size (the storage floor an append cannot beat);
- raw SHA-256 of the same leaves (the hashing floor of verification);
- one primary-key SELECT of a row (the floor of any proof read).

    python benchmarks/bench_auditlog.py [--entries N] [--append N] [--repeat R] [--pg-url URL] [--skip-pg]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

PG_URL = os.environ.get(
    "FLEETWARDEN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def make_events(n: int) -> list:  # type: ignore[type-arg]
    from fleetwarden.events import Activity, api_activity

    return [
        api_activity(
            operation="POST /v1/devices",
            activity=Activity.CREATE,
            actor="token:0f3a9c1d/ops-admin",
            message=f"device dev-{i:08d} created",
            resources=[{"type": "device", "uid": f"dev-{i:08d}"}],
            src_ip="10.20.30.40",
            device_uid=f"dev-{i:08d}",
        )
        for i in range(n)
    ]


def bench_append(url: str, events: list, batch: int) -> tuple[float, float, int]:  # type: ignore[type-arg]
    """(end-to-end events/s, writer-only events/s, leaf bytes) through group commit."""
    from fleetwarden.auditlog.component import to_pending
    from fleetwarden.auditlog.store import AuditStore
    from fleetwarden.auditlog.writer import GroupCommitter

    half = len(events) // 2
    store = AuditStore.open(url)
    committer = GroupCommitter(store, batch_max=batch)
    committer.start()
    # end to end: Event -> validation + canonical JSON -> durable commit, acked
    t0 = time.perf_counter()
    futs = []
    for k in range(0, half, batch):
        futs.append(committer.submit([to_pending(e, 64 * 1024) for e in events[k : k + batch]]))
    for f in futs:
        f.result()
    e2e = half / (time.perf_counter() - t0)
    # writer only: items already serialised by their producers
    items = [to_pending(e, 64 * 1024) for e in events[half:]]
    t0 = time.perf_counter()
    futs = [committer.submit(items[k : k + batch]) for k in range(0, len(items), batch)]
    for f in futs:
        f.result()
    writer = len(items) / (time.perf_counter() - t0)
    committer.stop()
    size = store.size()
    assert size == len(events), size
    leaf_bytes = len(store.entry(0).leaf)  # type: ignore[union-attr]
    store.close()
    return e2e, writer, leaf_bytes


def baseline_sqlite(path: Path, leaves: list[bytes], batch: int) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA cache_size=-65536")
    con.execute("PRAGMA wal_autocheckpoint=20000")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, leaf BLOB)")
    t0 = time.perf_counter()
    for k in range(0, len(leaves), batch):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO t VALUES (?, ?)", [(k + i, x) for i, x in enumerate(leaves[k : k + batch])]
        )
        con.execute("COMMIT")
    rate = len(leaves) / (time.perf_counter() - t0)
    con.close()
    return rate


def build_big(url: str, n: int) -> None:
    from fleetwarden.auditlog.store import AuditStore, pending_event

    store = AuditStore.open(url)
    have = store.size()
    template = make_events(1)[0].to_ocsf()
    step = 20_000
    for k in range(have, n, step):
        items = []
        for i in range(k, min(n, k + step)):
            template["message"] = f"device dev-{i:08d} created"
            template["metadata"]["uid"] = f"bench-{i}"
            items.append(pending_event(f"bench-{i}", template, logged_at=1_700_000_000_000 + i))
        store.append(items)
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--append", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3, help="append runs (best is reported)")
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--skip-pg", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleetwarden.auditlog.checkpoint import Checkpointer
    from fleetwarden.auditlog.note import Ed25519Signer, verifier_for
    from fleetwarden.auditlog.store import AuditStore
    from fleetwarden.auditlog.verify import verify_log

    tmp = Path(tempfile.mkdtemp(prefix="bench-auditlog-", dir=os.environ.get("BENCH_DIR")))
    rows: list[tuple[str, str, str, str]] = []
    try:
        # 1. durable append ----------------------------------------------------------
        from fleetwarden.auditlog.store import canonical_json

        events = make_events(args.append)
        leaves = [canonical_json(e.to_ocsf()) for e in events]
        # the machine is shared: alternate runs of ours and of the baseline and report
        # every run and the best, so a burst of someone else's load shows as spread
        e2es: list[float] = []
        writers: list[float] = []
        bases: list[float] = []
        for r in range(args.repeat):
            e2e, writer, leaf_len = bench_append(
                f"sqlite:///{tmp / f'append{r}.db'}", events, args.batch
            )
            e2es.append(e2e)
            writers.append(writer)
            bases.append(baseline_sqlite(tmp / f"baseline{r}.db", leaves, args.batch))
        base = max(bases)

        def runs(xs: list[float]) -> str:
            return ", ".join(f"{x:,.0f}" for x in xs)

        rows.append(
            (
                "durable append, SQLite, end to end (Event -> fsync'd, acked)",
                f"best {max(e2es):,.0f} events/s (runs: {runs(e2es)})",
                f"best {base:,.0f} rows/s plain SQLite insert (runs: {runs(bases)})",
                f"{max(e2es) / base:.2f}",
            )
        )
        rows.append(
            (
                "durable append, SQLite, writer only (pre-serialised)",
                f"best {max(writers):,.0f} events/s (runs: {runs(writers)})",
                f"best {base:,.0f} rows/s plain SQLite insert",
                f"{max(writers) / base:.2f}",
            )
        )
        if not args.skip_pg:
            import uuid

            from sqlalchemy import create_engine, text

            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.pg_url)
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
                n = min(len(events), 100_000)
                pe2e, pwriter, _ = bench_append(url, make_events(n), args.batch)
                rows.append(
                    ("durable append, PostgreSQL, end to end", f"{pe2e:,.0f} events/s", "-", "-")
                )
                rows.append(
                    (
                        "durable append, PostgreSQL, writer only",
                        f"{pwriter:,.0f} events/s",
                        "-",
                        "-",
                    )
                )
            finally:
                with admin.begin() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
        del events, leaves

        # 2. full verification of N entries -------------------------------------------
        big = f"sqlite:///{tmp / 'big.db'}"
        t0 = time.perf_counter()
        build_big(big, args.entries)
        build_s = time.perf_counter() - t0
        store = AuditStore.open(big)
        signer = Ed25519Signer("bench", Ed25519PrivateKey.generate())
        Checkpointer(store, signer, "bench/audit").make()
        t0 = time.perf_counter()
        rep = verify_log(store, [verifier_for(signer)])
        verify_s = time.perf_counter() - t0
        assert rep.ok, rep.problems[:3]
        assert rep.size == args.entries
        all_leaves = [leaf for _, leaf, _ in store.iter_rows()]
        t0 = time.perf_counter()
        for leaf in all_leaves:
            hashlib.sha256(b"\x00" + leaf).digest()
        sha_s = time.perf_counter() - t0
        del all_leaves
        con = sqlite3.connect(tmp / "big.db")
        t0 = time.perf_counter()
        for _ in con.execute("SELECT seq, leaf, leaf_hash FROM audit_entries ORDER BY seq"):
            pass
        read_s = time.perf_counter() - t0
        rows.append(
            (
                f"full verification, {args.entries:,} entries",
                f"{verify_s:.2f} s",
                f"{sha_s:.2f} s raw SHA-256 of the leaves; {read_s:.2f} s plain SELECT of all rows",
                f"{verify_s / (sha_s + read_s):.2f} x (hash + read)",
            )
        )

        # 3. inclusion proofs at N ----------------------------------------------------
        store.close()
        store = AuditStore.open(big)
        rng = random.Random(7)
        idx = [rng.randrange(args.entries) for _ in range(2000)]
        times = []
        for i in idx:
            t0 = time.perf_counter()
            store.inclusion_proof(i, args.entries)
            times.append(time.perf_counter() - t0)
        first_ms = times[0] * 1000
        med = statistics.median(times) * 1000
        p99 = sorted(times)[int(len(times) * 0.99)] * 1000
        one = []
        for i in idx[:500]:
            t0 = time.perf_counter()
            con.execute("SELECT leaf_hash FROM audit_entries WHERE seq = ?", (i,)).fetchone()
            one.append(time.perf_counter() - t0)
        con.close()
        one_ms = statistics.median(one) * 1000
        rows.append(
            (
                f"inclusion proof at {args.entries:,} entries (2,000 random leaves)",
                f"median {med:.3f} ms, p99 {p99:.3f} ms, first (cold) {first_ms:.2f} ms",
                f"{one_ms:.3f} ms one primary-key SELECT",
                f"{med / one_ms:.1f}",
            )
        )
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"leaf size {leaf_len} bytes (an OCSF API Activity event with its log envelope); batch {args.batch}; building the {args.entries:,}-entry log took {build_s:.1f} s\n"
    )
    print("| measurement | result | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
