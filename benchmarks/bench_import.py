"""Bulk import of devices from CSV into SQLite and PostgreSQL.

Target (issue [foundation]): 1,000,000 devices in at most 60 s into each database on a
2-core machine, peak memory under 1 GB. Each import runs in a fresh child process so its
peak RSS is its own. The baseline is the same file read and split by Python's csv module
in the same run: the ratio says how far validation and storage are from the parse floor.

    python benchmarks/bench_import.py [--rows N] [--pg-url URL] [--skip-pg]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PG_URL = os.environ.get(
    "FLEETWARDEN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def make_csv(path: Path, rows: int) -> None:
    models = ["EM-100", "EM-200", "PT-9", "IV-3"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "device_id",
                "model",
                "hardware_revision",
                "risk_class",
                "sector",
                "firmware_version",
                "key_storage",
                "apn",
                "ip",
                "ip_fixed",
                "allowed_cidrs",
                "vlan",
                "groups",
                "site",
            ]
        )
        for i in range(rows):
            w.writerow(
                [
                    f"dev-{i:08d}",
                    models[i % 4],
                    "B",
                    ("low", "medium", "high")[i % 3],
                    "energy" if i % 2 else "",
                    f"1.{i % 7}.0",
                    "secure_element" if i % 5 else "file",
                    "private" if i % 10 else "public",
                    f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                    "true" if i % 3 else "false",
                    f"10.{(i >> 16) & 255}.0.0/16",
                    100 + i % 20,
                    f"region-{i % 8};model-{i % 4}",
                    f"site-{i % 1000}",
                ]
            )


def child(db_url: str, path: str, batch: int) -> None:
    """Runs in a fresh process: open, migrate, import, print timing and peak RSS."""
    from fleetwarden.registry import Actor, Registry

    reg = Registry.open(db_url)
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        res = reg.import_devices(
            fh, fmt="csv", actor=Actor("bench"), batch_size=batch, size_hint=os.path.getsize(path)
        )
    dt = time.perf_counter() - t0
    n = reg.count_devices()
    reg.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "devices": res.devices, "counted": n, "peak_mb": peak_mb}))


def baseline(path: Path) -> float:
    t0 = time.perf_counter()
    n = 0
    with path.open(newline="") as fh:
        for _row in csv.reader(fh):
            n += 1
    return time.perf_counter() - t0


def run_child(db_url: str, path: Path, batch: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", db_url, str(path), str(batch)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"import child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--skip-pg", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "fleet.csv"
        make_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        base = baseline(csv_path)
        results = []
        r = run_child(f"sqlite:///{tmp}/bench.db", csv_path, args.batch)
        assert r["counted"] == args.rows, r
        results.append(("SQLite (WAL)", r))
        if not args.skip_pg:
            from sqlalchemy import create_engine, text

            schema = f"fwbench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.pg_url)
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
                r = run_child(url, csv_path, args.batch)
                assert r["counted"] == args.rows, r
                results.append(("PostgreSQL (COPY)", r))
            finally:
                with admin.begin() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    print(f"{args.rows:,} devices, CSV {size_mb:.0f} MB, 2 groups per device, batch {args.batch}\n")
    print("| target | seconds | devices/s | peak RSS MB | x csv.reader baseline |")
    print("|---|---|---|---|---|")
    print(f"| csv.reader only (baseline) | {base:.1f} | {args.rows / base:,.0f} | - | 1.0 |")
    for name, r in results:
        print(
            f"| {name} | {r['seconds']:.1f} | {args.rows / r['seconds']:,.0f} | {r['peak_mb']:.0f} | {r['seconds'] / base:.1f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
