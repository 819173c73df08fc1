"""Firmware (control C6): image verification, TUF refresh, rollout feedback.

Targets (issue [firmware]):
- verify a 256 MB MCUboot image at >= 80% of `sha256sum`'s throughput on the same file,
  in the same run, with flat memory (peak RSS of the verifying process reported);
- a python-tuf ngclient refresh against a repository with 10,000 targets in <= 300 ms
  over loopback HTTP (cold client: root, timestamp, snapshot, targets and the product
  role with all 10,000 targets); baseline: a plain HTTP GET + json.loads of that role;
- the rollout controller applying >= 5,000 device feedback reports/s for a rollout of
  100,000 devices (SQLite, batches of 1,000 reports, one transaction per batch, every
  report updating its deployment, the device's firmware version and writing its event);
  baseline: the bare UPDATE of the same deployment rows with executemany.

    python benchmarks/bench_firmware.py [--image-mb 256] [--targets 10000] [--devices 100000]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def _best(fn, n: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _child_verify(img: str, pub: str) -> None:
    """Runs in a fresh process so its peak RSS is its own."""
    from fleetwarden.firmware.image import verify_image
    from fleetwarden.firmware.keys import read_public_key

    key = read_public_key(Path(pub))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    verify_image(img, [key])
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": dt, "peak_mb": peak / 1024, "before_mb": base / 1024}))


def bench_verify(tmp: Path, mb: int) -> list[str]:
    from fleetwarden.firmware.image import ImageVersion, sign_image
    from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem

    raw = tmp / "raw.bin"
    block = os.urandom(1 << 20)
    with raw.open("wb") as fh:
        for i in range(mb):
            fh.write(block[i % 7 :] + block[: i % 7])
    key = FileSigner(generate_key("ecdsa-p256"))
    img = tmp / "fw.img"
    sign_image(raw, img, key, version=ImageVersion(1, 0, 0), security_counter=1)
    raw.unlink()
    pub = tmp / "pub.pem"
    pub.write_text(public_pem(key.public_key()))
    size = img.stat().st_size
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, __file__, "--child-verify", str(img), str(pub)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout))
    ours = min(r["seconds"] for r in runs)
    peak = max(r["peak_mb"] for r in runs)
    before = max(r["before_mb"] for r in runs)
    sha = _best(lambda: subprocess.run(["sha256sum", str(img)], check=True, capture_output=True))
    ratio = (size / ours) / (size / sha)
    return [
        f"### Verify a {mb} MB image (ECDSA P-256)\n",
        "| what | seconds | MB/s | peak RSS MB |",
        "|---|---|---|---|",
        f"| `sha256sum` (baseline) | {sha:.2f} | {size / sha / 1e6:,.0f} | - |",
        f"| fleetwarden verify | {ours:.2f} | {size / ours / 1e6:,.0f} | {peak:.0f} (at start {before:.0f}) |",
        "",
        f"verify throughput = **{ratio:.0%}** of sha256sum (target >= 80%); memory flat: "
        f"peak RSS grew {peak - before:.1f} MB while reading {size / 1e6:,.0f} MB.\n",
    ]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def bench_tuf(tmp: Path, n: int) -> list[str]:
    from tuf.ngclient import Updater

    from fleetwarden.firmware.repository import Repository

    repo = Repository(tmp / "repo", tmp / "keys")
    repo.init(tmp / "rootkeys", passphrase=b"bench passphrase")
    src = tmp / "t.bin"
    items = []
    for i in range(n):
        p = tmp / "src" / f"{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"firmware {i}".encode())
        items.append((f"fleet/{i // 100}.{i % 100}.0/fw-{i}.bin", p, {"version": f"{i}"}))
    t = time.perf_counter()
    repo.add_targets("fleet", items)
    build = time.perf_counter() - t
    _ = src
    handler = functools.partial(_Quiet, directory=str(repo.path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    target = items[-1][0]
    bin_role = repo._bin_of("fleet", target)

    def latest(role: str) -> str:
        return max(
            (p.name for p in repo.metadata_dir.glob(f"*.{role}.json")),
            key=lambda n: int(n.split(".")[0]),
        )

    # what a cold client fetches: timestamp, snapshot, targets, product role, one bin
    fetched = [
        "timestamp.json",
        latest("snapshot"),
        latest("targets"),
        latest("fleet"),
        latest(bin_role),
    ]
    bin_kb = (repo.metadata_dir / latest(bin_role)).stat().st_size / 1024

    def cold() -> None:
        d = Path(tempfile.mkdtemp(dir=tmp))
        shutil.copyfile(repo.metadata_dir / "1.root.json", d / "root.json")
        up = Updater(str(d), f"{base}/metadata/", str(d), f"{base}/targets/", bootstrap=None)
        up.refresh()
        assert up.get_targetinfo(target)

    def raw_get() -> None:
        for name in fetched:
            with urllib.request.urlopen(f"{base}/metadata/{name}") as r:
                json.loads(r.read())

    ours = _best(cold, 5)
    floor = _best(raw_get, 5)
    httpd.shutdown()
    return [
        f"### TUF refresh, {n:,} targets (loopback HTTP)\n",
        f"64 hash bins per product line (bin of the target: {bin_kb:,.0f} KiB); "
        f"repository build (all {n:,} targets in one publish): {build:.1f} s\n",
        "| what | ms |",
        "|---|---|",
        f"| GET + json.loads of the 5 files the client fetches (baseline) | {floor * 1000:.0f} |",
        f"| ngclient cold refresh + get_targetinfo | {ours * 1000:.0f} |",
        "",
        f"refresh = **{ours * 1000:.0f} ms** (target <= 300 ms), {ours / floor:.1f}x the bare "
        "download+parse (the rest is signature checks and TUF's canonical JSON).\n",
    ]


def bench_rollout(tmp: Path, n: int) -> list[str]:
    from sqlalchemy import bindparam, insert

    import fleetwarden.firmware.models  # noqa: F401
    from fleetwarden.firmware.image import ImageVersion, sign_image
    from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem
    from fleetwarden.firmware.models import FirmwareDeployment
    from fleetwarden.firmware.rollout import Feedback, RolloutService
    from fleetwarden.firmware.service import FirmwareService
    from fleetwarden.registry import Actor, Registry
    from fleetwarden.registry.models import Device
    from fleetwarden.settings import Settings

    reg = Registry.open(f"sqlite:///{tmp / 'bench.db'}")
    svc = FirmwareService(reg, Settings(data_dir=tmp / "data"))
    svc.repo.init(tmp / "rk2", passphrase=b"bench passphrase")
    key = FileSigner(generate_key("ed25519"))
    actor = Actor("bench")
    svc.add_product("meter", actor)
    svc.trust_key("meter", public_pem(key.public_key()).encode(), actor)
    raw = tmp / "m.raw"
    raw.write_bytes(os.urandom(4096))
    img = tmp / "m.img"
    sign_image(raw, img, key, version=ImageVersion(2, 0, 0), security_counter=1)
    svc.publish(img, "meter", "2.0.0", actor)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    rows = [
        {
            "id": f"m{i:07d}",
            "risk_class": "medium",
            "key_storage": "unknown",
            "ip_fixed": False,
            "allowed_cidrs": [],
            "status": "active",
            "attributes": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    with reg.session() as s:
        for k in range(0, n, 10_000):
            s.execute(insert(Device), rows[k : k + 10_000])
    devices = [r["id"] for r in rows]
    rs = RolloutService(reg)
    t = time.perf_counter()
    rs.create("bench", "meter", "2.0.0", actor, devices=devices, success_threshold=100)
    create = time.perf_counter() - t
    batch = 1000
    t = time.perf_counter()
    applied = 0
    for k in range(0, n, batch):
        res = rs.record_feedback([Feedback(d, "success") for d in devices[k : k + batch]])
        applied += res.applied
    ours = time.perf_counter() - t
    # baseline: the bare UPDATE of the same rows, same batches, no events or counters
    tbl = FirmwareDeployment.__table__
    stmt = tbl.update().where(tbl.c.device_id == bindparam("d")).values(state=bindparam("s"))  # type: ignore[attr-defined]
    t = time.perf_counter()
    for k in range(0, n, batch):
        with reg.session() as s:
            s.execute(stmt, [{"d": d, "s": "failure"} for d in devices[k : k + batch]])
    floor = time.perf_counter() - t
    state = rs.get("bench")["state"]
    reg.close()
    return [
        f"### Rollout feedback, {n:,} devices (SQLite, batches of {batch})\n",
        f"rollout creation (bucketing + {n:,} deployments): {create:.1f} s; final state: {state}\n",
        "| what | seconds | reports/s |",
        "|---|---|---|",
        f"| bare executemany UPDATE (baseline) | {floor:.1f} | {n / floor:,.0f} |",
        f"| RolloutService.record_feedback | {ours:.1f} | {applied / ours:,.0f} |",
        "",
        f"controller = **{applied / ours:,.0f} reports/s** (target >= 5,000), "
        f"{ours / floor:.1f}x the bare UPDATE.\n",
    ]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-verify":
        _child_verify(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-mb", type=int, default=256)
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--only", choices=["verify", "tuf", "rollout"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fw-") as d:
        tmp = Path(d)
        out: list[str] = []
        if args.only in (None, "verify"):
            out += bench_verify(tmp, args.image_mb)
        if args.only in (None, "tuf"):
            out += bench_tuf(tmp, args.targets)
        if args.only in (None, "rollout"):
            out += bench_rollout(tmp, args.devices)
        print("\n".join(out))


if __name__ == "__main__":
    main()
