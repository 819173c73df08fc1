"""Identity benchmarks: issuance core path, EST over HTTPS with client certificates,
CRL generation.

Targets (issue [identity]):
- issuance core path (parse + verify CSR, policy, sign, store) >= 3,000 P-256 certs/s on
  one core and >= 70 % of a bare ``cryptography`` issue loop measured in the same run;
- EST simpleenroll over HTTPS with client certificates and keep-alive, load client on
  the same machine: >= 500 enrollments/s;
- a CRL with 100,000 revoked entries in <= 2 s.

What each figure measures (no shortcuts hidden):
- "core path": ``IdentityService.provision`` (factory-line batch issuance) in batches of
  500 on SQLite: per CSR the DER parse + signature check, device-id and key policy,
  public-key fingerprint, M1 shared-key check (set-based), ``FleetCA.issue_device``
  (full device profile) and the same certificate + device-key + outbox-event rows the
  EST path writes, one transaction per batch;
- "bare loop": ``cryptography`` alone: load CSR, check its signature, sign a certificate
  with the same extensions, DER-encode; no policy, no storage;
- "EST": the real ``fleetwarden up`` process (SQLite), N client threads each with its own
  keep-alive HTTPS connection and a factory client certificate (mTLS), one
  ``simpleenroll`` per device; every request is a full enrolment (auth, policy, M1 check,
  sign, one transaction with the event);
- "CRL": ``IdentityService.regenerate_crl`` (registry query, build, sign, write DER + PEM)
  with N revoked certificates in the registry; baseline: ``cryptography`` building and
  signing the same CRL from in-memory entries.

    python benchmarks/bench_identity.py [--certs N] [--est N] [--threads T] [--crl N]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

os.environ.pop("FLEETWARDEN_CA_PASSPHRASE", None)

from fleetwarden.identity.ca import init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.models import IssuedCertificate
from fleetwarden.identity.service import IdentityService, Issued
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import Device


def make_csrs(n: int, prefix: str = "d") -> list[tuple[object, bytes]]:
    out = []
    for i in range(n):
        k = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}{i}")]))
            .sign(k, hashes.SHA256())
        )
        out.append((k, csr.public_bytes(serialization.Encoding.DER)))
    return out


def add_devices(reg: Registry, ids: list[str]) -> None:
    with reg.session() as s:
        for d in ids:
            s.add(
                Device(
                    id=d,
                    risk_class="medium",
                    key_storage="unknown",
                    ip_fixed=False,
                    allowed_cidrs=[],
                    status="active",
                    attributes={},
                )
            )


def bench_core(n: int) -> list[str]:
    d = Path(tempfile.mkdtemp(prefix="fw-bench-id-"))
    ca = init_ca(d, IdentitySettings())
    reg = Registry.open(f"sqlite:///{d / 'r.db'}")
    csrs = [der for _, der in make_csrs(n)]
    add_devices(reg, [f"d{i}" for i in range(n)])
    svc = IdentityService(reg, ca)
    key = ca.key.private_key  # type: ignore[attr-defined]

    def bare() -> float:
        t = time.perf_counter()
        for der in csrs:
            c = x509.load_der_x509_csr(der)
            assert c.is_signature_valid
            ca.device_builder("x", c.public_key()).sign(key, hashes.SHA256()).public_bytes(
                serialization.Encoding.DER
            )
        return n / (time.perf_counter() - t)

    def core() -> float:
        actor = Actor("bench")
        t = time.perf_counter()
        for start in range(0, n, 500):
            results = svc.provision(csrs[start : start + 500], actor)
            assert all(isinstance(r, Issued) for r in results)
        return n / (time.perf_counter() - t)

    b1 = bare()
    c1 = core()
    b2 = bare()
    base = (b1 + b2) / 2  # baseline on both sides of the measured run (noisy machine)
    reg.close()
    return [
        f"| issuance core path (P-256, store in SQLite) | {n:,} certs | {c1:,.0f} certs/s | {c1 / base:.0%} of bare |",
        f"| bare `cryptography` issue loop (baseline) | {n:,} certs | {base:,.0f} certs/s | 100% |",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_est(n: int, threads: int) -> list[str]:
    d = Path(tempfile.mkdtemp(prefix="fw-bench-est-"))
    data = d / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env["FLEETWARDEN_DATA_DIR"] = str(data)
    # manufacturer CA for the factory client certificates
    mkey = ec.generate_private_key(ec.SECP256R1())
    mname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench factory CA")])
    now = datetime.now(UTC)
    mcert = (
        x509.CertificateBuilder()
        .issuer_name(mname)
        .subject_name(mname)
        .public_key(mkey.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(mkey, hashes.SHA256())
    )
    (d / "maker.pem").write_bytes(mcert.public_bytes(serialization.Encoding.PEM))
    env["FLEETWARDEN_IDENTITY__MANUFACTURER_CA_FILE"] = str(d / "maker.pem")
    env["FLEETWARDEN_IDENTITY__CRL_PORT"] = str(free_port())
    fw = [sys.executable, "-m", "fleetwarden"]
    subprocess.run([*fw, "init"], env=env, check=True, capture_output=True)
    subprocess.run([*fw, "ca", "init"], env=env, check=True, capture_output=True)
    reg = Registry.open(f"sqlite:///{(data / 'fleetwarden.db').resolve()}")
    add_devices(reg, [f"e{i}" for i in range(n)])
    reg.close()
    csrs = make_csrs(n, "e")
    # one factory identity per client thread is enough for TLS; each CSR names its device
    # and the factory cert must name that device, so give each device its own factory cert
    fac: list[tuple[Path, Path]] = []
    for i in range(n):
        k = ec.generate_private_key(ec.SECP256R1())
        c = (
            x509.CertificateBuilder()
            .issuer_name(mname)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"e{i}")]))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(mkey, hashes.SHA256())
        )
        cp, kp = d / f"f{i}.crt", d / f"f{i}.key"
        cp.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        fac.append((cp, kp))
    port = free_port()
    proc = subprocess.Popen(
        [*fw, "up", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{port}"
    root = str(data / "identity" / "root.crt")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.get(
                        f"{base}/health", verify=ssl.create_default_context(cafile=root), timeout=1
                    ).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # Each thread owns a slice of devices; a client certificate is bound to one TLS
        # connection, so each device's enrolment opens its own connection here, and the
        # keep-alive figure uses Basic tokens over one connection per thread instead.
        bodies = [base64.b64encode(der) for _, der in csrs]
        errors: list[str] = []

        def worker_mtls(idx: list[int]) -> None:
            for i in idx:
                ctx = ssl.create_default_context(cafile=root)
                ctx.load_cert_chain(str(fac[i][0]), str(fac[i][1]))
                with httpx.Client(verify=ctx, timeout=30) as c:
                    r = c.post(
                        f"{base}/.well-known/est/simpleenroll",
                        content=bodies[i],
                        headers={"Content-Type": "application/pkcs10"},
                    )
                    if r.status_code != 200:
                        errors.append(r.text)

        half = n // 2
        slices = [list(range(t, half, threads)) for t in range(threads)]
        t0 = time.perf_counter()
        ts = [threading.Thread(target=worker_mtls, args=(s,)) for s in slices]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        mtls_rate = half / (time.perf_counter() - t0)
        # keep-alive: tokens for the second half, one persistent connection per thread
        env_tok = dict(env)
        toks = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys;from fleetwarden.settings import load_settings;from fleetwarden.identity.ca import FleetCA;"
                "from fleetwarden.identity.service import IdentityService;from fleetwarden.registry import Registry,Actor;"
                f"s=load_settings();r=Registry.open(s.effective_database_url);svc=IdentityService(r,FleetCA.load(s.data_dir,s.identity));"
                f"print('\\n'.join(svc.create_token(f'e{{i}}',Actor('bench')) for i in range({half},{n})))",
            ],
            env=env_tok,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()

        def worker_keepalive(idx: list[int]) -> None:
            with httpx.Client(verify=ssl.create_default_context(cafile=root), timeout=30) as c:
                for i in idx:
                    r = c.post(
                        f"{base}/.well-known/est/simpleenroll",
                        content=bodies[i],
                        headers={"Content-Type": "application/pkcs10"},
                        auth=(f"e{i}", toks[i - half]),
                    )
                    if r.status_code != 200:
                        errors.append(r.text)

        slices = [list(range(half + t, n, threads)) for t in range(threads)]
        t0 = time.perf_counter()
        ts = [threading.Thread(target=worker_keepalive, args=(s,)) for s in slices]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ka_rate = (n - half) / (time.perf_counter() - t0)

        # baseline: the same server answering GET /health over the same kind of connections
        def worker_health(k: int) -> None:
            with httpx.Client(verify=ssl.create_default_context(cafile=root), timeout=30) as c:
                for _ in range(k):
                    c.get(f"{base}/health")

        t0 = time.perf_counter()
        per = max(1, (n - half) // threads)
        ts = [threading.Thread(target=worker_health, args=(per,)) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        health_rate = per * threads / (time.perf_counter() - t0)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    if errors:
        print(f"<!-- {len(errors)} EST errors, first: {errors[0][:200]} -->")
    return [
        f"| EST simpleenroll, factory client cert (mTLS), new TLS connection per device, {threads} threads | {half:,} | {mtls_rate:,.0f} enrollments/s | {mtls_rate / health_rate:.0%} of /health |",
        f"| EST simpleenroll, token, keep-alive HTTPS, {threads} threads | {n - half:,} | {ka_rate:,.0f} enrollments/s | {ka_rate / health_rate:.0%} of /health |",
        f"| baseline: GET /health over keep-alive HTTPS, same server, {threads} threads | {per * threads:,} | {health_rate:,.0f} req/s | 100% |",
    ]


def bench_crl(n: int) -> list[str]:
    d = Path(tempfile.mkdtemp(prefix="fw-bench-crl-"))
    ca = init_ca(d, IdentitySettings())
    reg = Registry.open(f"sqlite:///{d / 'r.db'}")
    now = datetime.now(UTC)
    rows = [
        {
            "serial": format(x509.random_serial_number(), "x"),
            "kind": "device",
            "device_id": None,
            "subject": "CN=x",
            "fingerprint_sha256": os.urandom(32).hex(),
            "public_key_sha256": os.urandom(32).hex(),
            "key_type": "ec-p256",
            "not_before": now,
            "not_after": now + timedelta(days=30),
            "status": "revoked",
            "issued_at": now,
            "issued_via": "bench",
            "revoked_at": now,
            "revocation_reason": "key_compromise" if i % 2 else None,
            "der": b"",
        }
        for i in range(n)
    ]
    with reg.engine.begin() as conn:
        conn.execute(IssuedCertificate.__table__.insert(), rows)
    svc = IdentityService(reg, ca)
    t = time.perf_counter()
    crl = svc.regenerate_crl()
    ours = time.perf_counter() - t
    assert len(list(crl)) == n
    entries = [(int(r["serial"], 16), now, r["revocation_reason"]) for r in rows]
    t = time.perf_counter()
    from cryptography.hazmat.primitives.serialization import Encoding

    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.cert.subject,
        last_update=now,
        next_update=now + timedelta(days=1),
        revoked_certificates=[
            x509.RevokedCertificateBuilder(serial_number=s, revocation_date=w).build()
            for s, w, _ in entries
        ],
    )
    builder.sign(ca.key.private_key, hashes.SHA256()).public_bytes(Encoding.DER)  # type: ignore[attr-defined]
    bare = time.perf_counter() - t
    reg.close()
    return [
        f"| CRL generation (registry query + build + sign + write), {n:,} revoked | {n:,} | {ours:.2f} s | {bare / ours:.0%} of bare speed |",
        f"| bare `cryptography` CRL build + sign, same entries (baseline) | {n:,} | {bare:.2f} s | 100% |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--certs", type=int, default=5000)
    ap.add_argument("--est", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--crl", type=int, default=100_000)
    a = ap.parse_args()
    print("| what | n | result | vs baseline (same run) |")
    print("|---|---|---|---|")
    for line in bench_core(a.certs) + bench_crl(a.crl) + bench_est(a.est, a.threads):
        print(line, flush=True)


if __name__ == "__main__":
    main()
