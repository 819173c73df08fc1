"""Detection throughput and baseline state size.

Targets (issue [detect]): at least 200,000 metric datapoints/s per core through rules and
baselines; baseline state at most 2 KB per device (1,000,000 devices in 4 GB).

A datapoint is one metric value of one device in one window (a count such as
``bytes_out``, or a set such as ``listening_ports``); a simulated agent device reports
about 20 per window. Windows are generated first (seeded simulated fleet, attacks
included), then timed through ``Detector.process`` on one thread. Times are CPU time of
the process (``time.process_time``): "per core" on a machine shared with other work;
the wall time is printed beside it. The baseline loop in
the same run touches every datapoint of every window once (``getattr`` per metric, the
floor for any per-datapoint Python work), so the ratio says how far the detector is from
the cost of merely reading its input on this machine, whatever the machine's load.

    python benchmarks/bench_detect.py [--devices N] [--days D]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc

from fleetwarden.detect.baseline import BaselineConfig, DeviceBaseline, state_bytes
from fleetwarden.detect.engine import Detector
from fleetwarden.detect.metrics import COUNTS, SETS, MetricWindow
from fleetwarden.detect.rules import Rule
from fleetwarden.detect.simulate import Fleet, FleetParams, default_rules


def rules() -> list[Rule]:
    return [
        *default_rules(),
        Rule(
            name="peer-bytes",
            metric="bytes_out",
            comparison="less-than-equals",
            statistic="p99",
            consecutive_to_alarm=3,
        ),
        Rule(name="apn", metric="source_ips", comparison="in-cidr-set", cidrs=["10.64.0.0/10"]),
        Rule(
            name="ports",
            metric="listening_ports",
            comparison="in-port-set",
            ports=["tcp/22", "udp/5683", "tcp/8080", "udp/123"],
        ),
        Rule(
            name="drip", metric="bytes_out", comparison="less-than", value=5e7, duration_windows=12
        ),
    ]


def datapoints(mw: MetricWindow) -> int:
    n = sum(1 for m in COUNTS if getattr(mw, m) is not None)
    n += sum(1 for s in SETS if getattr(mw, s))
    return n + (mw.cert_fingerprint is not None) + (mw.firmware_version is not None)


def baseline_loop(items: list[tuple[MetricWindow, tuple[str, ...]]]) -> float:
    t0 = time.process_time()
    acc = 0
    for mw, _g in items:
        for m in COUNTS:
            v = getattr(mw, m)
            if v is not None:
                acc += v
        for s in SETS:
            acc += len(getattr(mw, s))
    return time.process_time() - t0


def run(
    items: list[tuple[MetricWindow, tuple[str, ...]]], *, multivariate: bool
) -> tuple[float, Detector]:
    det = Detector(
        rules(), baselines={"*": BaselineConfig(learning_windows=288)}, multivariate=multivariate
    )
    gc.collect()
    t0 = time.process_time()
    w0 = time.perf_counter()
    for mw, g in items:
        det.process(mw, g)
    cpu = time.process_time() - t0
    print(f"# multivariate={multivariate}: {cpu:.1f} s CPU, {time.perf_counter() - w0:.1f} s wall")
    return cpu, det


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=400)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--state-devices", type=int, default=100_000)
    a = ap.parse_args()
    fleet = Fleet(7, FleetParams(devices=a.devices, days=a.days, learning_days=1, instances=3))
    items: list[tuple[MetricWindow, tuple[str, ...]]] = []
    for _w, batch, _ann in fleet.windows():
        items += [(mw, g) for mw, g, _att in batch]
    dps = sum(datapoints(mw) for mw, _ in items)
    base = min(baseline_loop(items) for _ in range(3))
    t_det, det = run(items, multivariate=False)
    t_mv, _ = run(items, multivariate=True)
    n = len(items)

    # state: the real per-device figure, and a large population measured by tracemalloc
    sizes = [state_bytes(b) for b in det.baselines.devices.values()]
    wire = max(len(b.to_bytes()) for b in det.baselines.devices.values())
    proto = next(iter(det.baselines.devices.values()))
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    pop: dict[str, DeviceBaseline] = {}
    raw = proto.to_bytes()
    for i in range(a.state_devices):
        pop[f"dev-{i:08d}"] = DeviceBaseline.from_bytes(raw)
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    per_dev_total = grown / a.state_devices

    print(
        f"{n:,} windows, {dps:,} datapoints ({dps / n:.1f} per window), "
        f"{a.devices} devices x {a.days} days, {len(det.rules.rules)} rules, one thread"
    )
    print()
    print("| measure | value | baseline loop | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| rules + baselines + novelty | **{dps / t_det:,.0f} datapoints/s** "
        f"({n / t_det:,.0f} windows/s) | {dps / base:,.0f} datapoints/s | "
        f"{t_det / base:.1f}x the read-only loop |"
    )
    print(
        f"| ... + HalfSpaceTrees second opinion | {dps / t_mv:,.0f} datapoints/s "
        f"({n / t_mv:,.0f} windows/s) | | {t_mv / base:.1f}x |"
    )
    print(
        f"| baseline state per device (object + arrays) | mean {sum(sizes) / len(sizes):,.0f} B, "
        f"max {max(sizes):,} B | | |"
    )
    print(f"| serialised state per device | {wire:,} B | | |")
    print(
        f"| heap per device incl. dict entry and id, {a.state_devices:,} devices (tracemalloc) "
        f"| {per_dev_total:,.0f} B | | -> 1,000,000 devices: "
        f"{per_dev_total * 1e6 / 2**30:.2f} GiB |"
    )
    print(f"| Python | {sys.version.split()[0]} | | |")
    del pop


if __name__ == "__main__":
    main()
