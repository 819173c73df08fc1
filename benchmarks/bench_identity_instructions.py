"""Issuance core path in *instructions* per certificate, against the bare loop.

The time ratio of ``bench_identity.py`` (core path vs bare ``cryptography`` loop) is the
issue's target, but on a shared VM its rounds spread by several points and the speed of
crypto and of Python code drift differently with the neighbours' load. This counts
instructions instead, which do not drift: each of three processes runs under
valgrind's cachegrind with a fixed hash seed,

- *setup*: CA, registry, 1,500 registered devices, a warm-up batch of 500 CSRs through
  the core path and 50 through the bare loop;
- *bare*: setup, then 1,000 CSRs through the bare loop (load CSR, check its signature,
  sign the same device profile through ``FleetCA.device_builder``, DER);
- *core*: setup, then the same 1,000 CSRs through ``IdentityService.provision`` in
  batches of 500 (the WAL checkpoint thread is stopped, so its timing-dependent work
  is not counted);

and reports (bare - setup) and (core - setup) per certificate. The ratio of the two is
not the time ratio (crypto code runs more instructions per cycle than the
interpreter), but a change that lowers the core path's count lowers its work, whatever
the machine is doing. Needs ``valgrind`` (Debian package valgrind).

    python benchmarks/bench_identity_instructions.py
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

N = 1000
WARM = 500


def child(mode: str, csr_file: str) -> None:
    os.environ.pop("FLEETWARDEN_CA_PASSPHRASE", None)
    sys.path.insert(0, str(Path(__file__).parent))

    from bench_identity import add_devices, bare_issue
    from fleetwarden._internal.heap import freeze_startup_heap
    from fleetwarden.identity.ca import init_ca
    from fleetwarden.identity.config import IdentitySettings
    from fleetwarden.identity.service import IdentityService
    from fleetwarden.registry import Actor, Registry

    data = pickle.loads(Path(csr_file).read_bytes())
    d = Path(tempfile.mkdtemp(prefix="fw-bench-ir-"))
    ca = init_ca(d, IdentitySettings())
    reg = Registry.open(f"sqlite:///{d / 'r.db'}")
    if reg.checkpointer is not None:
        reg.checkpointer.close()
    svc = IdentityService(reg, ca)
    actor = Actor("bench")
    key = ca.key.private_key  # type: ignore[attr-defined]

    add_devices(reg, [f"w-d{i}" for i in range(WARM)] + [f"r-d{i}" for i in range(N)])
    svc.provision(data["warm"], actor)
    bare_issue(ca, key, data["warm"][:50])
    freeze_startup_heap()
    if mode == "bare":
        bare_issue(ca, key, data["run"])
    elif mode == "core":
        for s in range(0, N, 500):
            svc.provision(data["run"][s : s + 500], actor)
    os._exit(0)  # no interpreter teardown in the count


def count(mode: str, csr_file: str) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            mode,
            csr_file,
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    m = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): skipped")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_identity import make_csrs

    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        f.write(
            pickle.dumps(
                {
                    "warm": [der for _, der in make_csrs(WARM, "w-d")],
                    "run": [der for _, der in make_csrs(N, "r-d")],
                }
            )
        )
    try:
        with ThreadPoolExecutor(3) as pool:  # three processes; counts do not depend on it
            setup, bare, core = pool.map(lambda m: count(m, f.name), ("setup", "bare", "core"))
    finally:
        os.unlink(f.name)
    b, c = (bare - setup) / N, (core - setup) / N
    print("| what | n | instructions per certificate | vs bare |")
    print("|---|---|---|---|")
    print(
        f"| issuance core path (P-256, store in SQLite), cachegrind | {N:,} certs "
        f"| {c:,.0f} | {b / c:.1%} of bare; {c - b:,.0f} more per certificate |"
    )
    print(f"| bare `cryptography` issue loop, same CSRs | {N:,} certs | {b:,.0f} | 100% |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
