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
import contextlib
import getpass
import os
import random
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "interop" / "gateway"))

import datetime as dt  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from gw_harness import Harness  # noqa: E402

from fleetwarden.gateway.testpki import ScratchPKI  # noqa: E402
from fleetwarden.registry.models import Device  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Fleet:
    """Many device identities sharing one key (the broker does not care; issuance does)."""

    def __init__(
        self,
        pki: ScratchPKI,
        directory: Path,
        n: int,
        prefix: str,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.key_path = directory / f"{prefix}.key"
        self.key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
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
            r, w = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.ctx, server_hostname="localhost"
            )
            w.write(connect_packet(self.did))
            ack = await r.readexactly(4)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            return False
        if ack[3] != 0:
            w.close()
            return False
        self.connects += 1
        self.up.set()
        with contextlib.suppress(OSError, ssl.SSLError):
            await r.read()  # until the broker drops us
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
            await asyncio.sleep(random.uniform(0, min(10.0, 0.5 * 2**delay_n)))


def ctx_for(pki: ScratchPKI, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.chain_path))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _settle(reads, t0: float, quiet: float = 2.0, limit: float = 300.0) -> list[tuple[int, float]]:
    """Poll counters together until none moves for ``quiet`` s; per counter, return
    (final count, seconds from t0 to its last change)."""
    last = [r() for r in reads]
    changed = [time.monotonic()] * len(reads)
    while time.monotonic() - max(changed) < quiet and time.monotonic() - t0 < limit:
        time.sleep(0.05)
        for i, r in enumerate(reads):
            v = r()
            if v != last[i]:
                last[i], changed[i] = v, time.monotonic()
    return [(v, max(c - t0, 1e-6)) for v, c in zip(last, changed, strict=True)]


LINE = '{"seq":%08d,"temp":21.5,"state":"ok"}\n'


def _publishers(port: int, ca: Path, fleet: Fleet, lines: Path) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--cafile",
                str(ca),
                "--cert",
                str(fleet.paths[d]),
                "--key",
                str(fleet.key_path),
                "-i",
                d,
                "-t",
                f"devices/{d}/telemetry",
                "-l",
                "-q",
                "0",
            ],
            stdin=lines.open("rb"),
            stdout=subprocess.DEVNULL,
        )
        for d in fleet.ids
    ]


def bench_throughput(h: Harness, fleet: Fleet, messages: int) -> dict[str, float]:
    per = messages // len(fleet.ids)
    lines = h.tmp / "lines.txt"
    lines.write_text("".join(LINE % i for i in range(per)))
    size = len(LINE % 0)
    out = h.tmp / "bare.out"
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(h.gateway.platform_port),
            "-u",
            "$platform",
            "-P",
            h.gateway._password,
            "-t",
            "devices/#",
            "-i",
            "bare-sub",
        ],
        stdout=out.open("wb"),
    )
    time.sleep(0.5)
    m = h.gateway.metrics
    assert m is not None
    base = m.totals["messages_sent"]
    t0 = time.monotonic()
    procs = _publishers(h.port, h.pki.chain_path, fleet, lines)
    (accounted, t_acc), (bare, t_bare) = _settle(
        [lambda: m.totals["messages_sent"] - base, lambda: out.stat().st_size // size], t0
    )
    for p in procs:
        p.wait()
    sub.terminate()
    sub.wait()
    return {
        "sent": per * len(fleet.ids),
        "accounted": accounted,
        "rate": accounted / t_acc,
        "bare": bare,
        "bare_rate": bare / t_bare,
    }


def bench_plain_broker(
    tmp: Path, pki: ScratchPKI, server_cert: Path, server_key: Path, fleet: Fleet, messages: int
) -> dict[str, float]:
    """Baseline: the same TLS listener on a Mosquitto without the plugin (no accounting)."""
    port, sport = b_free_port(), b_free_port()
    conf = tmp / "plain.conf"
    conf.write_text(
        "per_listener_settings true\npersistence false\nset_tcp_nodelay true\n"
        f"max_queued_messages 100000\nlog_dest none\nuser {getpass.getuser()}\n"
        f"listener {port} 127.0.0.1\ncafile {pki.chain_path}\ncertfile {server_cert}\n"
        f"keyfile {server_key}\nrequire_certificate true\nuse_identity_as_username true\n"
        "tls_version tlsv1.2\nallow_anonymous false\n"
        f"listener {sport} 127.0.0.1\nallow_anonymous true\n"
    )
    broker = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", sport), 1):
                break
            time.sleep(0.1)
        per = messages // len(fleet.ids)
        lines = tmp / "lines-plain.txt"
        lines.write_text("".join(LINE % i for i in range(per)))
        size = len(LINE % 0)
        out = tmp / "plain.out"
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(sport), "-t", "devices/#"],
            stdout=out.open("wb"),
        )
        time.sleep(0.5)
        t0 = time.monotonic()
        procs = _publishers(port, pki.chain_path, fleet, lines)
        [(got, t_got)] = _settle([lambda: out.stat().st_size // size], t0)
        for p in procs:
            p.wait()
        sub.terminate()
        sub.wait()
        return {"received": got, "rate": got / t_got}
    finally:
        broker.terminate()
        broker.wait()


def b_free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


# ---------------------------------------------------------------- fleet child process
# The device fleets run in a child process so that the monitor (in this process, as in
# `fleetwarden up`) is measured without a load generator competing for its GIL.


def fleet_child(
    conn, port: int, ca: str, key: str, devices: list[tuple[str, str]], reconnect: bool
) -> None:
    asyncio.run(_fleet_main(conn, port, Path(ca), Path(key), devices, reconnect))


async def _fleet_main(conn, port, ca, key, devices, reconnect) -> None:
    loop = asyncio.get_running_loop()
    devs: dict[str, RawDevice] = {}
    for did, cert in devices:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(cert, str(key))
        d = RawDevice(did, ctx, port)
        d.reconnect = reconnect
        devs[did] = d
    tasks = [asyncio.create_task(d.run()) for d in devs.values()]
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        op = cmd["op"]
        if op == "status":
            conn.send(
                {
                    "up": sum(d.up.is_set() for d in devs.values()),
                    "connects": sum(d.connects for d in devs.values()),
                    "all_twice": all(d.up.is_set() and d.connects >= 2 for d in devs.values()),
                }
            )
        elif op == "wait_drop":
            d = devs[cmd["did"]]
            t_end = time.monotonic() + cmd["timeout"]
            while d.dropped_at is None and time.monotonic() < t_end:
                await asyncio.sleep(0.002)
            conn.send({"dropped_at": d.dropped_at})
        elif op == "stop":
            for d in devs.values():
                d.reconnect = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.send({"stopped": True})
            return


class FleetProc:
    def __init__(self, h: Harness, fleets: list[Fleet], *, reconnect: bool) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        devices = [(d, str(f.paths[d])) for f in fleets for d in f.ids]
        assert len({id(f.key) for f in fleets}) == 1  # one shared key file suffices
        self.n = len(devices)
        self.proc = ctx.Process(
            target=fleet_child,
            args=(
                child,
                h.port,
                str(h.pki.chain_path),
                str(fleets[0].key_path),
                devices,
                reconnect,
            ),
        )
        self.proc.start()

    def ask(self, **cmd):
        self.conn.send(cmd)
        return self.conn.recv()

    def wait(self, pred, timeout: float) -> tuple[bool, float]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred(self.ask(op="status")):
                return True, time.monotonic()
            time.sleep(0.1)
        return False, time.monotonic()

    def stop(self) -> None:
        self.ask(op="stop")
        self.proc.join(30)


def bench_storm(h: Harness, fleet: Fleet) -> dict[str, float]:
    fp = FleetProc(h, [fleet], reconnect=True)
    try:
        fp.wait(lambda st: st["up"] == fp.n, 300)
        m = h.gateway.metrics
        assert m is not None
        # the monitor has caught up with the initial connections
        _settle([lambda: m.totals["connections"]], time.monotonic(), quiet=3.0)
        base = m.totals["connections"]
        before = fp.ask(op="status")["connects"]
        sup = h.gateway.supervisor
        assert sup is not None
        t0 = time.monotonic()
        h.run(sup.kill())
        _ok, t_back = fp.wait(lambda st: st["all_twice"], 300)
        after = fp.ask(op="status")
        [(accounted, _)] = _settle(
            [lambda: m.totals["connections"] - base], time.monotonic(), quiet=3.0
        )
        return {
            "back_s": t_back - t0,
            "reconnected": after["up"],
            "client_connects": after["connects"] - before,
            "accounted_connects": accounted,
        }
    finally:
        fp.stop()


def bench_revocation(h: Harness, others: Fleet, targets: Fleet) -> dict[str, float]:
    fp = FleetProc(h, [others, targets], reconnect=False)
    try:
        fp.wait(lambda st: st["up"] == fp.n, 300)
        lat: list[float] = []
        for did in targets.ids:
            t0 = time.monotonic()
            h.run(h.gateway.revoke(did, targets.serials[did]))
            dropped = fp.ask(op="wait_drop", did=did, timeout=30)["dropped_at"]
            lat.append((dropped or time.monotonic()) - t0)
        time.sleep(0.5)
        still = fp.ask(op="status")["up"]
    finally:
        fp.stop()
    q = statistics.quantiles(lat, n=20, method="inclusive")
    return {
        "p50": statistics.median(lat),
        "p95": q[18],
        "max": max(lat),
        "others_up": still,
        "others": len(others.ids),
    }


def bench_idle(h: Harness, fleet: Fleet) -> dict[str, float]:
    sup = h.gateway.supervisor
    assert sup is not None
    assert sup.pid is not None
    broker0, mon0 = rss_kb(sup.pid), rss_kb(os.getpid())
    fp = FleetProc(h, [fleet], reconnect=True)
    try:
        fp.wait(lambda st: st["up"] == fp.n, 600)
        up = fp.ask(op="status")["up"]
        time.sleep(3)
        broker1, mon1 = rss_kb(sup.pid), rss_kb(os.getpid())
    finally:
        fp.stop()
    return {
        "up": up,
        "broker0_mb": broker0 / 1024,
        "broker_mb": broker1 / 1024,
        "per_conn_kb": (broker1 - broker0) / max(up, 1),
        "mon0_mb": mon0 / 1024,
        "mon_mb": mon1 / 1024,
    }


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
        h = Harness(
            tmp,
            pki,
            max_connects_per_addr=0,
            metrics_flush_ms=500,
            policy_refresh_s=3600,
            max_packet_size=65536,
            max_queued_messages=100_000,
        ).start()
        try:
            pubs = Fleet(pki, tmp, a.publishers, "pub")
            key = ec.generate_private_key(ec.SECP256R1())
            storm = Fleet(pki, tmp, a.storm, "storm", key)
            others = Fleet(pki, tmp, a.others, "oth", key)
            targets = Fleet(pki, tmp, a.revocations, "rev", key)
            idle = Fleet(pki, tmp, a.idle, "idle", key)
            register(h, pubs.ids + storm.ids + others.ids + targets.ids + idle.ids)
            idl = bench_idle(h, idle)  # first, on a fresh broker
            tp = bench_throughput(h, pubs, a.messages)
            plain = bench_plain_broker(
                tmp, pki, h.server.cert_path, h.server.key_path, pubs, a.messages
            )
            st = bench_storm(h, storm)
            rv = bench_revocation(h, others, targets)
        finally:
            h.stop()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(
        f"| QoS0 mTLS telemetry counted per device ({tp['sent']:,} msgs from {a.publishers} devices) "
        f"| {tp['rate']:,.0f} msg/s ({tp['accounted']:,} counted) | >= 30,000 msg/s |"
    )
    print(
        f"| bare mosquitto_sub on devices/#, same broker, same run | {tp['bare_rate']:,.0f} msg/s "
        f"({tp['bare']:,} received) | baseline |"
    )
    print(f"| counted / bare subscriber | {tp['accounted'] / max(tp['bare'], 1):.2f} | >= 0.80 |")
    print(
        f"| same load on a Mosquitto without the plugin (bare subscriber) | {plain['rate']:,.0f} msg/s "
        f"({plain['received']:,} received) | baseline |"
    )
    print(
        f"| counted rate / plugin-less broker rate | {tp['rate'] / max(plain['rate'], 1):.2f} | |"
    )
    print(
        f"| reconnect storm: {a.storm:,} devices all back after broker kill | {st['back_s']:.1f} s "
        f"({st['reconnected']:,} up) | <= 60 s |"
    )
    print(
        f"| storm reconnects seen by clients / counted by monitor | {st['client_connects']:,} / "
        f"{st['accounted_connects']:,} | equal |"
    )
    print(
        f"| revocation latency p50 / p95 / max ({a.revocations} revocations, {rv['others']:,} others "
        f"connected) | {rv['p50'] * 1000:.0f} / {rv['p95'] * 1000:.0f} / {rv['max'] * 1000:.0f} ms | p95 <= 5 s |"
    )
    print(
        f"| other devices still connected after the revocations | {rv['others_up'] - 0:,} "
        f"(of {rv['others']:,} others) | all |"
    )
    print(
        f"| broker RSS: empty -> {idl['up']:,} idle mTLS devices | {idl['broker0_mb']:.1f} -> "
        f"{idl['broker_mb']:.1f} MB ({idl['per_conn_kb']:.1f} KB/device) | measured |"
    )
    print(
        f"| monitor process (gateway component) RSS, same | {idl['mon0_mb']:.0f} -> {idl['mon_mb']:.0f} MB "
        f"| measured |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
