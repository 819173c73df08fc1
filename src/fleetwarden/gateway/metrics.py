"""Per-device gateway metrics, at parity with AWS IoT Device Defender's cloud-side set.

The broker plugin counts on its own thread and reports deltas every
``metrics_flush_ms``; :class:`MetricsAggregator` sums them into fixed windows
(``metrics_window_s``, default 5 min) and :func:`metric_event` turns one device's window
into an OCSF 4001 Network Activity event (activity 6, Traffic) whose
``unmapped.fleetwarden_metrics`` holds the record documented in docs/gateway.md.

Invariants: counts are never lost between windows (a delta is added to the window open
when it arrives); the per-window sets of topics and addresses are bounded; refusals that
cannot be attributed to a device (TLS handshake failures) are kept per source address.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.events import Event, EventClass, Severity

MAX_SET = 32
_COUNTERS = {
    "msgs_out": "messages_sent",
    "bytes_out": "bytes_sent",
    "msgs_in": "messages_received",
    "bytes_in": "bytes_received",
    "conn_attempts": "connection_attempts",
    "conn_ok": "connections",
    "conn_refused": "connection_refusals",
    "disconnects": "disconnects",
    "authz_fail": "authorization_failures",
    "disconnect_s": "disconnect_duration_s",
}


@dataclass
class _Window:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS.values(), 0))
    topics: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    connected: bool = False
    tls_failures: int = 0


class MetricsAggregator:
    """Sums plugin deltas per device (or per source address) per window."""

    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        # Windows are aligned to multiples of window_s (epoch), as the detector expects.
        self.start = self._aligned(clock())
        self.devices: dict[str, _Window] = {}
        self.sources: dict[str, _Window] = {}
        self.totals: dict[str, int] = dict.fromkeys(_COUNTERS.values(), 0)

    def add(self, rec: dict[str, Any]) -> bool:
        """Add one plugin record; return False (and ignore it) when malformed."""
        device = rec.get("device")
        if not isinstance(device, str) or not device or len(device) > 128:
            return False
        w = self.devices.setdefault(device, _Window())
        for src, dst in _COUNTERS.items():
            v = rec.get(src, 0)
            if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
                w.counts[dst] += int(v)
                self.totals[dst] += int(v)
        for key, target in (("topics", w.topics), ("addresses", w.addresses)):
            vals = rec.get(key)
            if isinstance(vals, list):
                for v in vals:
                    if isinstance(v, str) and len(target) < MAX_SET:
                        target.add(v[:256])
        if isinstance(rec.get("connected"), bool):
            w.connected = bool(rec["connected"])
        return True

    def add_unattributed_failure(self, address: str) -> None:
        w = self.sources.setdefault(address[:64], _Window())
        w.tls_failures += 1
        w.counts["connection_attempts"] += 1
        w.counts["connection_refusals"] += 1
        w.addresses.add(address[:64])

    def _aligned(self, t: float) -> float:
        return float(int(t // self.window_s) * self.window_s)

    def due(self) -> bool:
        return self.clock() - self.start >= self.window_s

    def flush(self) -> list[dict[str, Any]]:
        """Close the current window and return its records (devices, then sources)."""
        now = self.clock()
        end = min(now, self.start + self.window_s)
        start_ms, end_ms = int(self.start * 1000), int(end * 1000)
        out: list[dict[str, Any]] = []
        for device, w in sorted(self.devices.items()):
            out.append(_record(w, start_ms, end_ms, device=device, address=None))
        for address, w in sorted(self.sources.items()):
            out.append(_record(w, start_ms, end_ms, device=None, address=address))
        # Devices still connected carry over so the next window reports them too.
        self.devices = {d: _Window(connected=True) for d, w in self.devices.items() if w.connected}
        self.sources = {}
        self.start = self._aligned(now)
        return out


def _record(
    w: _Window, start_ms: int, end_ms: int, *, device: str | None, address: str | None
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "device": device,
        "source_address": address,
        "window_start": start_ms,
        "window_end": end_ms,
        **w.counts,
        "tls_failures": w.tls_failures,
        "source_addresses": sorted(w.addresses),
        "topics": sorted(w.topics),
        "connected": w.connected,
    }
    return rec


DETECT_SCHEMA = "fleetwarden.detect.metric_window/1"


def detect_window(rec: dict[str, Any], window_s: float) -> dict[str, Any] | None:
    """The record in the detection control's contract (docs/detect.md), devices only."""
    if rec["device"] is None:
        return None
    return {
        "schema": DETECT_SCHEMA,
        "device_id": rec["device"],
        "start": rec["window_start"] // 1000,
        "window_s": int(window_s),
        "messages_sent": rec["messages_sent"],
        "messages_received": rec["messages_received"],
        "bytes_sent": rec["bytes_sent"],
        "bytes_received": rec["bytes_received"],
        "connection_attempts": rec["connection_attempts"],
        "disconnects": rec["disconnects"],
        "disconnect_seconds": rec["disconnect_duration_s"],
        "auth_failures": rec["connection_refusals"],
        "authz_failures": rec["authorization_failures"],
        "source_ips": rec["source_addresses"][:16],
        "source_ips_total": len(rec["source_addresses"]),
        "topics": rec["topics"],
        "topics_total": len(rec["topics"]),
    }


def metric_event(rec: dict[str, Any], window_s: float = 300.0) -> Event:
    """OCSF 4001 Network Activity / Traffic carrying one window of one device."""
    who = rec["device"] or rec["source_address"]
    return Event(
        class_uid=EventClass.NETWORK_ACTIVITY,
        activity_id=6,  # Traffic
        message=f"gateway metrics for {who}",
        severity_id=Severity.INFORMATIONAL,
        device_uid=rec["device"],
        src_ip=rec["source_address"],
        data={
            "start_time": rec["window_start"],
            "end_time": rec["window_end"],
            "traffic": {
                "bytes_in": rec["bytes_sent"],
                "bytes_out": rec["bytes_received"],
                "packets_in": rec["messages_sent"],
                "packets_out": rec["messages_received"],
            },
            "unmapped": {
                "fleetwarden_metrics": rec,
                "metric_window": detect_window(rec, window_s),
            },
        },
    )
