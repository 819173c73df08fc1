"""Identity benchmarks: issuance core path, EST over HTTPS with client certificates,
CRL generation.

Targets (issue [identity]):
- issuance core path (parse + verify CSR, policy, sign, store) >= 3,000 P-256 certs/s on
  one core and >= 70 % of a bare ``cryptography`` issue loop measured in the same run;
- EST simpleenroll over HTTPS with client certificates and keep-alive, load client on
  the same machine: >= 500 enrollments/s;
- a CRL with 100,000 revoked entries in <= 2 s.

What each figure measures (no shortcuts hidden):
- "core path": ``IdentityService.provision`` (factory-line batch issuance, the same
  engine as EST: ``enroll_many``) in batches of 500 on SQLite: per CSR the DER parse +
  signature check, device-id and key policy, rotation policy, public-key fingerprint,
  M1 shared-key check (set-based), ``FleetCA.issue_device`` (full device profile) and
  the certificate + device-key + outbox-event rows, one transaction per batch; the
  bare loop and the core path take turns batch by batch on the same CSRs, five rounds
  of fresh devices after an untimed warm-up round, median ratio reported;
- "bare loop": ``cryptography`` alone: load CSR, check its signature, sign a certificate
  with the same extensions, DER-encode; no policy, no storage;
- "EST": the real ``fleetwarden up`` process (SQLite, gateway and audit log running as
  in production) and a load client on the same machine (``est_load.py``: several
  processes, raw ``ssl`` sockets, everything prepared before the timed phase). Two
  workloads: (1) device sessions: a new mTLS connection with the device's factory
  certificate, then over that keep-alive connection ``GET cacerts``, ``GET csrattrs``
  and ``POST simpleenroll``; (2) keep-alive re-enrolment (the target's workload):
  devices enrolled in (1), each on its own keep-alive mTLS connection with its new
  fleet certificate, ``POST simplereenroll`` with a fresh key per request. Every
  enrolment is complete (auth, policy, M1 claim, sign, committed with its event). CPU
  per enrolment of the server (``/proc``) and the client workers. Baselines from the
  same server in the same run: ``GET /health`` (the whole framework stack and one
  SQLite query) and ``GET cacerts`` (a cached answer in front of the framework) over
  keep-alive HTTPS from ``wrk`` (when installed), and ``GET cacerts`` from this client;
- "CRL": ``IdentityService.regenerate_crl`` (registry query, build, sign, write DER + PEM)
  with N revoked certificates in the registry; baseline: ``cryptography`` building and
  signing the same CRL from in-memory entries.

    python benchmarks/bench_identity.py [--certs N] [--est N] [--procs P] [--crl N]
                                        [--wrk-seconds S] [--only core|crl|est]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

os.environ.pop("FLEETWARDEN_CA_PASSPHRASE", None)

from fleetwarden._internal.heap import freeze_startup_heap
from fleetwarden.identity.ca import FleetCA, init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.models import IssuedCertificate
from fleetwarden.identity.service import IdentityService, Issued
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import Device

sys.path.insert(0, str(Path(__file__).parent))
import est_load


def make_csrs(n: int, prefix: str = "d", *, fixed: bool = False) -> list[tuple[object, bytes]]:
    """``n`` CSRs, each for a fresh P-256 key; CN ``prefix + i`` (or ``prefix`` itself
    for all of them with ``fixed``)."""
    out = []
    for i in range(n):
        k = ec.generate_private_key(ec.SECP256R1())
        cn = prefix if fixed else f"{prefix}{i}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(k, hashes.SHA256())
        )
        out.append((k, csr.public_bytes(serialization.Encoding.DER)))
    return out


def bare_issue(ca: FleetCA, key: object, ders: list[bytes]) -> None:
    """The baseline: ``cryptography`` alone certifies each CSR (load it, check its
    signature, sign the same device profile, DER-encode); no policy, no storage."""
    for der in ders:
        c = x509.load_der_x509_csr(der)
        assert c.is_signature_valid
        ca.device_builder("x", c.public_key()).sign(key, hashes.SHA256()).public_bytes(  # type: ignore[arg-type]
            serialization.Encoding.DER
        )


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


def bench_core(n: int, rounds: int = 5, batch: int = 500) -> list[str]:
    """``rounds`` rounds of ``n`` fresh devices each. The bare loop and the core path
    take turns batch by batch on the *same* CSRs (the bare loop first certifies the
    batch's CSRs, then the core path provisions them), so both see the machine in the
    same state: it is shared and its speed drifts within seconds. Per round the ratio
    is the bare loop's time over the core path's; the median round is reported. An
    untimed warm-up round comes first (a server pays its first-use costs once:
    statement compilation, the new database's WAL file growing).

    The process is pinned to one CPU for the measurement ("on one core" literally):
    the registry's WAL checkpoint thread shares that core with the issuing thread."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        return _bench_core(n, rounds, batch)
    finally:
        os.sched_setaffinity(0, allowed)


def _bench_core(n: int, rounds: int, batch: int) -> list[str]:
    d = Path(tempfile.mkdtemp(prefix="fw-bench-id-"))
    ca = init_ca(d, IdentitySettings())
    reg = Registry.open(f"sqlite:///{d / 'r.db'}")
    svc = IdentityService(reg, ca)
    key = ca.key.private_key  # type: ignore[attr-defined]
    actor = Actor("bench")

    def bare(ders: list[bytes]) -> float:
        t = time.perf_counter()
        bare_issue(ca, key, ders)
        return time.perf_counter() - t

    def core(ders: list[bytes]) -> float:
        t = time.perf_counter()
        results = svc.provision(ders, actor)
        took = time.perf_counter() - t
        assert all(isinstance(r, Issued) for r in results)
        return took

    def one_round(r: int) -> tuple[float, float]:
        # each round for its own fresh devices (CN r<round>-d<i>), registered first
        ders = [der for _, der in make_csrs(n, f"r{r}-d")]
        add_devices(reg, [f"r{r}-d{i}" for i in range(n)])
        # devices are registered long before they are provisioned: their rows reach the
        # database file now, not during the timed batches
        if reg.checkpointer is not None:
            reg.checkpointer.checkpoint()
        t_bare = t_core = 0.0
        for start in range(0, n, batch):
            chunk = ders[start : start + batch]
            t_bare += bare(chunk)
            t_core += core(chunk)
        return t_bare, t_core

    one_round(-1)  # warm-up, untimed
    # as `fleetwarden up` does once started: start-up objects leave the collector's walks
    freeze_startup_heap()
    results = sorted(
        ((tb / tc, n / tc, n / tb) for tb, tc in (one_round(r) for r in range(rounds))),
    )
    ratio, core_rate, bare_rate = results[len(results) // 2]
    reg.close()
    return [
        f"| issuance core path (P-256, store in SQLite, one CPU), median of {rounds} rounds "
        f"| {n:,} certs | {core_rate:,.0f} certs/s | {ratio:.0%} of bare "
        f"(rounds: {', '.join(f'{x[0]:.0%}' for x in results)}) |",
        f"| bare `cryptography` issue loop (baseline, same rounds, same CSRs) | {n:,} certs "
        f"| {bare_rate:,.0f} certs/s | 100% |",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _factory_identity(
    d: Path, mname: x509.Name, mkey: ec.EllipticCurvePrivateKey, cn: str, now: datetime
) -> tuple[str, str]:
    k = ec.generate_private_key(ec.SECP256R1())
    c = (
        x509.CertificateBuilder()
        .issuer_name(mname)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(mkey, hashes.SHA256())
    )
    cp, kp = d / f"{cn}.crt", d / f"{cn}.key"
    cp.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cp), str(kp)


def _wrk(url: str, seconds: int, conns: int) -> float | None:
    """Requests/s from ``wrk`` (keep-alive HTTPS, no client certificate); None if absent."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "-t2", f"-c{conns}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"unexpected wrk output: {out}")


def _renewing_devices(
    d: Path,
    host: str,
    bodies: list[bytes],
    csrs: list[tuple[object, bytes]],
    count: int,
    total: int,
) -> list[est_load.Device]:
    """``count`` devices enrolled in the session phase, each with its new fleet
    certificate as client certificate and ``total // count`` re-enrolment requests, each
    for a fresh key (prepared here, untimed)."""
    keys = {f"e{i}": k for i, (k, _) in enumerate(csrs)}
    out = []
    for body in bodies[:count]:
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]
        cn = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        cp, kp = d / f"{cn}.fleet.crt", d / f"{cn}.fleet.key"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(
            keys[cn].private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        reqs = [
            est_load.post(
                host,
                "/.well-known/est/simplereenroll",
                base64.b64encode(der),
                "application/pkcs10",
            )
            for _, der in make_csrs(total // count, cn, fixed=True)
        ]
        out.append(est_load.Device(str(cp), str(kp), reqs))
    if len(out) < count:
        raise RuntimeError(f"only {len(out)} devices enrolled, {count} needed")
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_est(n: int, procs: int, wrk_seconds: int, ka_devices: int = 32) -> list[str]:
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
    # the gateway's MQTT broker too: another `up` on this machine may hold 8883
    env["FLEETWARDEN_GATEWAY__PORT"] = str(free_port())
    fw = [sys.executable, "-m", "fleetwarden"]
    # `init` creates the fleet CA on a fresh data directory (no separate `ca init`)
    subprocess.run([*fw, "init"], env=env, check=True, capture_output=True)
    reg = Registry.open(f"sqlite:///{(data / 'fleetwarden.db').resolve()}")
    add_devices(reg, [f"e{i}" for i in range(n)])
    reg.close()
    # Everything a device sends is prepared here, before any timed phase: its CSR, its
    # factory certificate (the CN names the device) and the request bytes.
    port = free_port()
    host = f"127.0.0.1:{port}"
    csrs = make_csrs(n, "e")
    devices = []
    for i in range(n):
        cert_file, key_file = _factory_identity(d, mname, mkey, f"e{i}", now)
        body = base64.b64encode(csrs[i][1])
        devices.append(
            est_load.Device(
                cert_file,
                key_file,
                [
                    est_load.get(host, "/.well-known/est/cacerts"),
                    est_load.get(host, "/.well-known/est/csrattrs"),
                    est_load.post(
                        host, "/.well-known/est/simpleenroll", body, "application/pkcs10"
                    ),
                ],
            )
        )
    proc = subprocess.Popen(
        [*fw, "up", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://{host}"
    root = str(data / "identity" / "root.crt")
    addr = ("127.0.0.1", port)
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
        cacerts = est_load.get(host, "/.well-known/est/cacerts")
        health = est_load.get(host, "/health")
        # warm-up (imports, first connections, SQLite cache), not counted
        est_load.run_requests(addr, root, health, 200, procs=2, conns=1)
        wrk_health = _wrk(f"{base}/health", wrk_seconds, 16)
        wrk_cacerts = _wrk(f"{base}/.well-known/est/cacerts", wrk_seconds, 16)
        ka = est_load.run_requests(addr, root, cacerts, 4000, procs=procs, conns=1)
        server0 = _cpu_seconds(proc.pid)
        enrol = est_load.run_sessions(addr, root, devices, procs=procs, conns=1, keep_bodies=True)
        session_cpu = _cpu_seconds(proc.pid) - server0
        renewing = _renewing_devices(d, host, enrol.bodies, csrs, ka_devices, 2 * n)
        server0 = _cpu_seconds(proc.pid)
        renew = est_load.run_sessions(
            addr, root, renewing, procs=procs, conns=ka_devices // procs, per_request=True
        )
        server_cpu = _cpu_seconds(proc.pid) - server0
        client_cpu = renew.cpu
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    if enrol.errors or ka.errors or renew.errors:
        first = enrol.first_errors[:2] + renew.first_errors[:2]
        print(f"<!-- EST errors: {enrol.errors + ka.errors + renew.errors}, first: {first} -->")
    # GET /health goes through the whole framework stack (cacerts no longer does: it is
    # a fixed answer in front of it, see identity.est.EstFixedResponses)
    ref = wrk_health or ka.rate
    lines = [
        f"| EST re-enrolment over keep-alive mTLS: {ka_devices} devices, each on its own "
        f"connection with its fleet certificate, POST simplereenroll with a fresh key per "
        f"request; {procs} client processes | {renew.ok:,} | {renew.rate:,.0f} enrollments/s "
        f"| {renew.rate / ref:.0%} of /health req/s |",
        f"| CPU per keep-alive re-enrolment: server process {server_cpu / max(renew.ok, 1) * 1e3:.2f} ms, "
        f"load client {client_cpu / max(renew.ok, 1) * 1e3:.2f} ms (timed phase, "
        f"{renew.seconds:.1f} s, 2 cores) | | | |",
        f"| EST session per device: new mTLS connection (factory certificate), GET cacerts, "
        f"GET csrattrs, POST simpleenroll; {procs} client processes "
        f"| {n:,} | {enrol.rate:,.0f} enrollments/s | {enrol.rate / ref:.0%} of /health req/s |",
        f"| CPU per device session: server process {session_cpu / max(enrol.ok, 1) * 1e3:.2f} ms, "
        f"load client {enrol.cpu / max(enrol.ok, 1) * 1e3:.2f} ms (timed phase, "
        f"{enrol.seconds:.1f} s, 2 cores) | | | |",
        f"| baseline: GET cacerts, keep-alive HTTPS, this client, {procs} processes "
        f"| {ka.ok:,} | {ka.rate:,.0f} req/s | |",
    ]
    if wrk_health is not None and wrk_cacerts is not None:
        lines += [
            f"| baseline: GET cacerts, keep-alive HTTPS, wrk 2 threads 16 connections, "
            f"{wrk_seconds} s | | {wrk_cacerts:,.0f} req/s | |",
            f"| baseline: GET /health, keep-alive HTTPS, wrk 2 threads 16 connections, "
            f"{wrk_seconds} s | | {wrk_health:,.0f} req/s | 100% |",
        ]
    return lines


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
    ap.add_argument("--est", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=8, help="EST load client processes")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--only", choices=["core", "crl", "est"], default=None)
    ap.add_argument("--crl", type=int, default=100_000)
    a = ap.parse_args()
    print("| what | n | result | vs baseline (same run) |")
    print("|---|---|---|---|")
    parts = {
        "core": lambda: bench_core(a.certs),
        "crl": lambda: bench_crl(a.crl),
        "est": lambda: bench_est(a.est, a.procs, a.wrk_seconds),
    }
    for name, part in parts.items():
        if a.only in (None, name):
            for line in part():
                print(line, flush=True)


if __name__ == "__main__":
    main()
