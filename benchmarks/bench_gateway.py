"""Gateway benchmarks: the managed Mosquitto + fleetwarden plugin + monitor.

1. Sustained QoS0 telemetry over mTLS: N devices publish with mosquitto_pub -l (C
   clients, so the load generator is not the bottleneck); the per-device accounting
   (plugin counters summed by the monitor) against a bare mosquitto_sub subscriber on
   devices/# in the same run.
2. Reconnect storm: D devices connected, the broker is killed and restarted by the
   supervisor, every device reconnects with full-jitter exponential backoff; time until
   all are back, and the monitor's connection count against the clients' own count.
3. Revocation latency: R revocations (Gateway.revoke) while O other devices stay
   connected; time from the call to the dropped session, p50/p95; others dropped.
4. Memory: broker and monitor RSS with I idle connected devices.

    python benchmarks/bench_gateway.py [--messages N] [--storm D] [--others O] [--idle I]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration" / "gateway"))

import datetime as dt  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from harness import Harness  # noqa: E402

from fleetwarden.gateway.testpki import ScratchPKI  # noqa: E402
from fleetwarden.registry.models import Device  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Fleet:
    """Many device identities sharing one key (the broker does not care; issuance does)."""

    def __init__(self, pki: ScratchPKI, directory: Path, n: int, prefix: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_path = directory / f"{prefix}.key"
        self.key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        now = dt.datetime.now(dt.UTC)
        self.ids = [f"{prefix}-{i:05d}" for i in range(n)]
        self.paths: dict[str, Path] = {}
        self.serials: dict[str, str] = {}
        chain = pki.issuing.public_bytes(serialization.Encoding.PEM)
        for did in self.ids:
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, did)]))
                .issuer_name(pki.issuing.subject)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                .sign(pki.issuing_key, hashes.SHA256())
            )
            p = directory / f"{did}.crt"
            p.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + chain)
            self.paths[did] = p
            self.serials[did] = format(cert.serial_number, "x")


def register(h: Harness, ids: list[str]) -> None:
    with h.registry.session() as s:
        s.add_all([Device(id=i) for i in ids])
    h.reload()


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x02\x58" + len(cid).to_bytes(2, "big") + cid  # keepalive 600
    return b"\x10" + bytes([len(body)]) + body


class RawDevice:
    """A minimal MQTT 3.1.1 session over TLS (CONNECT/CONNACK, then idle)."""

    def __init__(self, did: str, ctx: ssl.SSLContext, port: int) -> None:
        self.did, self.ctx, self.port = did, ctx, port
        self.connects = 0
        self.dropped_at: float | None = None
        self.up = asyncio.Event()
        self.reconnect = False

    async def session(self) -> bool:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx,
                                                 server_hostname="localhost")
            w.write(connect_packet(self.did))
            ack = await r.readexactly(4)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            return False
        if ack[3] != 0:
            w.close()
            return False
        self.connects += 1
        self.up.set()
        try:
            await r.read()  # until the broker drops us
        except (OSError, ssl.SSLError):
            pass
        self.dropped_at = time.monotonic()
        self.up.clear()
        w.close()
        return True

    async def run(self) -> None:
        delay_n = 0
        while True:
            ok = await self.session()
            if not self.reconnect:
                return
            delay_n = 0 if ok else min(delay_n + 1, 6)
            await asyncio.sleep(random.uniform(0, min(10.0, 0.5 * 2**delay_n)))  # noqa: S311


def ctx_for(pki: ScratchPKI, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.chain_path))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def bench_throughput(h: Harness, fleet: Fleet, messages: int) -> dict[str, float]:
    n = len(fleet.ids)
    per = messages // n
    lines = Path(h.tmp / "lines.txt")
    lines.write_text("".join(f'{{"seq":{i},"t":21.5,"v":"ok"}}\n' for i in range(per)))
    pw = h.gateway._password
    sub = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(h.gateway.platform_port), "-u", "$platform",
         "-P", pw, "-t", "devices/#", "-i", "bare-sub"],
        stdout=(h.tmp / "bare.out").open("wb"),
    )
    time.sleep(0.5)
    base = h.gateway.metrics.totals["messages_sent"] if h.gateway.metrics else 0
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(h.port), "--cafile", str(h.pki.chain_path),
             "--cert", str(fleet.paths[d]), "--key", str(fleet.key_path), "-i", d,
             "-t", f"devices/{d}/telemetry", "-l", "-q", "0"],
            stdin=lines.open("rb"), stdout=subprocess.DEVNULL,
        )
        for d in fleet.ids
    ]
    for p in procs:
        p.wait()
    elapsed = time.monotonic() - t0
    time.sleep(1.5)  # last plugin flush and the subscriber's tail
    sub.terminate()
    sub.wait()
    received = (h.tmp / "bare.out").read_bytes().count(b"\n")
    accounted = (h.gateway.metrics.totals["messages_sent"] if h.gateway.metrics else 0) - base
    return {
        "sent": per * n, "elapsed": elapsed, "accounted": accounted, "bare": received,
        "rate": accounted / elapsed, "bare_rate": received / elapsed,
    }


async def bench_storm(h: Harness, fleet: Fleet) -> dict[str, float]:
    devs = [RawDevice(d, ctx_for(h.pki, fleet.paths[d], fleet.key_path), h.port) for d in fleet.ids]
    for d in devs:
        d.reconnect = True
    tasks = [asyncio.create_task(d.run()) for d in devs]
    # initial connect spread over a few seconds
    deadline = time.monotonic() + 120
    while sum(d.up.is_set() for d in devs) < len(devs) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    initial = sum(d.up.is_set() for d in devs)
    await asyncio.sleep(1.5)
    base = h.gateway.metrics.totals["connections"] if h.gateway.metrics else 0
    before = sum(d.connects for d in devs)
    sup = h.gateway.supervisor
    assert sup is not None
    t0 = time.monotonic()
    await sup.kill()
    await asyncio.sleep(0.5)
    deadline = t0 + 120
    while time.monotonic() < deadline:
        if all(d.up.is_set() and d.connects >= 2 for d in devs):
            break
        await asyncio.sleep(0.1)
    back = time.monotonic() - t0
    await asyncio.sleep(3.0)  # monitor reconnects, plugin flushes
    accounted = (h.gateway.metrics.totals["connections"] if h.gateway.metrics else 0) - base
    clients = sum(d.connects for d in devs) - before
    for d in devs:
        d.reconnect = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"initial": initial, "back_s": back, "reconnected": sum(d.up.is_set() for d in devs),
            "client_connects": clients, "accounted_connects": accounted}


async def bench_revocation(h: Harness, others: Fleet, targets: Fleet) -> dict[str, float]:
    o = [RawDevice(d, ctx_for(h.pki, others.paths[d], others.key_path), h.port) for d in others.ids]
    t = [RawDevice(d, ctx_for(h.pki, targets.paths[d], targets.key_path), h.port) for d in targets.ids]
    tasks = [asyncio.create_task(d.run()) for d in o + t]
    deadline = time.monotonic() + 120
    while sum(d.up.is_set() for d in o + t) < len(o) + len(t) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    lat: list[float] = []
    for d in t:
        t0 = time.monotonic()
        await h.gateway.revoke(d.did, targets.serials[d.did])
        while d.dropped_at is None and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.005)
        lat.append((d.dropped_at or time.monotonic()) - t0)
    still = sum(d.up.is_set() for d in o)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    q = statistics.quantiles(lat, n=20)
    return {"p50": statistics.median(lat), "p95": q[18], "max": max(lat), "others_up": still,
            "others": len(o)}


async def bench_idle(h: Harness, fleet: Fleet) -> dict[str, float]:
    sup = h.gateway.supervisor
    assert sup is not None and sup.pid is not None
    broker0 = rss_kb(sup.pid)
    mon0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    devs = [RawDevice(d, ctx_for(h.pki, fleet.paths[d], fleet.key_path), h.port) for d in fleet.ids]
    tasks = [asyncio.create_task(d.run()) for d in devs]
    deadline = time.monotonic() + 180
    while sum(d.up.is_set() for d in devs) < len(devs) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    up = sum(d.up.is_set() for d in devs)
    await asyncio.sleep(2)
    broker1 = rss_kb(sup.pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"up": up, "broker0_mb": broker0 / 1024, "broker_mb": broker1 / 1024,
            "per_conn_kb": (broker1 - broker0) / max(up, 1), "proc_maxrss_mb": mon0 / 1024}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--publishers", type=int, default=20)
    ap.add_argument("--storm", type=int, default=5000)
    ap.add_argument("--others", type=int, default=1000)
    ap.add_argument("--revocations", type=int, default=20)
    ap.add_argument("--idle", type=int, default=10000)
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        pki = ScratchPKI(tmp / "pki")
        h = Harness(tmp, pki, max_connects_per_addr=0, metrics_flush_ms=500,
                    policy_refresh_s=3600, max_packet_size=65536,
                    max_queued_messages=100_000).start()
        try:
            pubs = Fleet(pki, tmp, a.publishers, "pub")
            storm = Fleet(pki, tmp, a.storm, "storm")
            others = Fleet(pki, tmp, a.others, "oth")
            targets = Fleet(pki, tmp, a.revocations, "rev")
            idle = Fleet(pki, tmp, a.idle, "idle")
            register(h, pubs.ids + storm.ids + others.ids + targets.ids + idle.ids)
            tp = bench_throughput(h, pubs, a.messages)
            st = h.run(bench_storm(h, storm), timeout=600)
            rv = h.run(bench_revocation(h, others, targets), timeout=600)
            idl = h.run(bench_idle(h, idle), timeout=900)
        finally:
            h.stop()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| QoS0 mTLS telemetry accounted per device ({tp['sent']:,} msgs, {a.publishers} devices) "
          f"| {tp['rate']:,.0f} msg/s ({tp['accounted']:,} counted in {tp['elapsed']:.1f} s) | >= 30,000 msg/s |")
    print(f"| bare mosquitto_sub on devices/# (same run) | {tp['bare_rate']:,.0f} msg/s ({tp['bare']:,} received) | baseline |")
    print(f"| accounting / bare subscriber | {tp['accounted'] / max(tp['bare'], 1):.2f} | >= 0.80 |")
    print(f"| reconnect storm: {a.storm:,} devices back after broker kill | {st['back_s']:.1f} s "
          f"({st['reconnected']:,.0f} up) | <= 60 s |")
    print(f"| storm connects seen by clients / counted by monitor | {st['client_connects']:,.0f} / "
          f"{st['accounted_connects']:,.0f} | equal |")
    print(f"| revocation latency p50 / p95 / max ({a.revocations} revocations, {rv['others']:,} others) "
          f"| {rv['p50'] * 1000:.0f} / {rv['p95'] * 1000:.0f} / {rv['max'] * 1000:.0f} ms | p95 <= 5 s |")
    print(f"| other devices still connected after revocations | {rv['others_up']:,.0f} / {rv['others']:,.0f} | all |")
    print(f"| broker RSS idle -> {idl['up']:,.0f} idle mTLS devices | {idl['broker0_mb']:.1f} -> "
          f"{idl['broker_mb']:.1f} MB ({idl['per_conn_kb']:.1f} KB/device) | measured |")
    print(f"| monitor+load-generator process peak RSS | {idl['proc_maxrss_mb']:.0f} MB | measured |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
