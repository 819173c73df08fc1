"""Assessment of a large generated fleet: 1,000,000 inventory rows + 100,000 device certs.

Targets (issue [assess]): assessment (collect + all checks) at most 60 s on a 2-core
machine, peak memory under 4 GB, report rendering (all six files) at most 20 s. The
baseline, measured in the same run, is simply reading the same evidence files (every
byte of the inventory and of every certificate file): the ratio says how far the checks
run from the I/O floor. Assessment and rendering run in a fresh child process so the
peak RSS is theirs alone.

    python benchmarks/bench_assess.py [--rows N] [--certs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


def make_bundle(root: Path, rows: int, certs: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir(parents=True, exist_ok=True)
    sectors = ["energy", "health", "", "payments", "retail"]
    storages = ["secure_element", "tpm", "mcu_secure_storage", "file", "unknown"]
    now = datetime.now(UTC)
    seen = (now - timedelta(days=1)).isoformat(timespec="seconds")
    with (root / "inventory.csv").open("w") as fh:
        fh.write(
            "device_id,model,risk_class,sector,firmware_version,key_storage,apn,ip,ip_fixed,"
            "allowed_cidrs,vlan,groups,password_hash,open_ports,debug_ports_enabled,secure_boot,last_seen\n"
        )
        for i in range(rows):
            ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            fh.write(
                f"dev-{i:08d},EM-{100 + i % 4},{('low', 'medium', 'high')[i % 3]},{sectors[i % 5]},"
                f"1.{i % 7}.0,{storages[i % 5]},{'public' if i % 10 == 0 else 'private'},{ip},"
                f"{'true' if i % 9 else 'false'},10.0.0.0/8,{20 + i % 4},meters;site-{i % 50},"
                f",{'8883' if i % 13 else '23;8883'},{'true' if i % 101 == 0 else 'false'},true,{seen}\n"
            )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (root / "cas").mkdir(exist_ok=True)
    (root / "cas" / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "certs").mkdir(exist_ok=True)
    for i in range(certs):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev-{i:08d}")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(1000 + i)
            .not_valid_before(now - timedelta(days=i % 400))
            .not_valid_after(now + timedelta(days=365 - i % 400))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        (root / "certs" / f"dev-{i:08d}.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
        )


def baseline(root: Path) -> float:
    """Read every evidence byte: the I/O floor of the assessment."""
    t = time.perf_counter()
    n = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    n += len(chunk)
    return time.perf_counter() - t


def child(root: str, out: str) -> None:
    from fleetwarden.assess.engine import assess
    from fleetwarden.assess.evidence import collect
    from fleetwarden.assess.report import write_reports

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    ev = collect(Path(root))
    c1, t1 = cpu(), time.perf_counter()
    a = assess(ev)
    c2, t2 = cpu(), time.perf_counter()
    write_reports(a, Path(out))
    c3, t3 = cpu(), time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "collect": t1 - t0,
                "checks": t2 - t1,
                "render": t3 - t2,
                "collect_cpu": c1 - c0,
                "checks_cpu": c2 - c1,
                "render_cpu": c3 - c2,
                "peak_mb": peak_mb,
                "devices": len(ev.devices),
                "certs": len(ev.certs),
                "failing": len(a.failing),
                "checks_n": len(a.findings),
                "findings_json_mb": (Path(out) / "findings.json").stat().st_size / 1e6,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--certs", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the bundle here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    tmp = tempfile.TemporaryDirectory(prefix="bench-assess-")
    root = args.keep or Path(tmp.name) / "bundle"
    if not (root / "inventory.csv").exists():
        t = time.perf_counter()
        make_bundle(root, args.rows, args.certs)
        print(f"# generated the bundle in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    base = baseline(root)
    out = Path(tmp.name) / "out"
    res = subprocess.run(
        [sys.executable, __file__, "--child", str(root), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assessment = r["collect"] + r["checks"]
    size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
    print(
        f"{r['devices']:,} inventory rows + {r['certs']:,} device certificates "
        f"(one PEM file each), {size_mb:.0f} MB of evidence; {r['failing']} failing checks\n"
    )
    acpu = r["collect_cpu"] + r["checks_cpu"]
    print("| step | wall s | CPU s | target | wall x read-only baseline |")
    print("|---|---|---|---|---|")
    print(f"| read every evidence byte (baseline) | {base:.1f} | - | - | 1.0 |")
    print(
        f"| collect (parse + validate) | {r['collect']:.1f} | {r['collect_cpu']:.1f} | - | {r['collect'] / base:.1f} |"
    )
    print(f"| run the {r['checks_n']} checks | {r['checks']:.1f} | {r['checks_cpu']:.1f} | - | - |")
    print(
        f"| **assessment (collect + checks)** | **{assessment:.1f}** | {acpu:.1f} | <= 60 | {assessment / base:.1f} |"
    )
    print(
        f"| report rendering (6 files, incl. PDF) | {r['render']:.1f} | {r['render_cpu']:.1f} | <= 20 | - |"
    )
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"\npeak RSS of the assessment process: {r['peak_mb']:,.0f} MB (target < 4096); "
          f"findings.json {r['findings_json_mb']:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
