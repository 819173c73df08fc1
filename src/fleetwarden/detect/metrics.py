"""The metric input model: one :class:`MetricWindow` per device per window.

A window (default 300 s) carries the gateway-side metrics (what the managed broker sees
of a device, issue [gateway] point 5), the device-side metrics the agent reports under
its own namespace, and custom metrics declared in configuration. It travels as a plain
JSON object, the contract ``fleetwarden.detect.metric_window/1`` documented in
docs/detect.md; :meth:`MetricWindow.to_dict` and :func:`parse_window` are its two ends.

Invariants:
- a :class:`MetricWindow` that exists has passed :func:`parse_window`: counts are
  non-negative integers below :data:`MAX_COUNT`, addresses parse, ports are 0..65535,
  lists are de-duplicated and capped (``*_total`` keeps the true distinct count);
- ``None`` means "not reported" (an agent-less device has no device-side metrics), which
  rules and baselines skip, never read as zero;
- :class:`Intake` never grows without bound: per-device state exists only for devices
  the registry knows, and rejection records are a fixed-size ring.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.detect.errors import MetricRejectedError

SCHEMA = "fleetwarden.detect.metric_window/1"
DEFAULT_WINDOW_S = 300
#: a count above this in one window is not a measurement but a bug or an attack on us
MAX_COUNT = 10**12
MAX_LIST = {"source_ips": 16, "topics": 64, "destinations": 64, "listening_ports": 64}
MAX_ID = 128
MAX_CUSTOM = 32
#: clocks may run this far ahead before a datapoint counts as "from the future"
FUTURE_SKEW_S = 120
#: older datapoints are stale (a replay or a device that was offline for days)
MAX_AGE_S = 2 * 86400

GATEWAY_COUNTS = (
    "messages_sent",
    "messages_received",
    "bytes_sent",
    "bytes_received",
    "connection_attempts",
    "disconnects",
    "disconnect_seconds",
    "auth_failures",
    "authz_failures",
)
DEVICE_COUNTS = ("bytes_in", "bytes_out", "packets_in", "packets_out", "established")
COUNTS = GATEWAY_COUNTS + DEVICE_COUNTS
#: set-valued metrics and the derived count names rules may use on them
SETS = ("source_ips", "topics", "destinations", "listening_ports")
DERIVED = {
    "source_ip_count": "source_ips",
    "topic_count": "topics",
    "destination_count": "destinations",
    "listening_port_count": "listening_ports",
}


@dataclass(slots=True)
class MetricWindow:
    """What one device did in one window. Build with :func:`parse_window`."""

    device_id: str
    start: int
    window_s: int = DEFAULT_WINDOW_S
    messages_sent: int | None = None
    messages_received: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    connection_attempts: int | None = None
    disconnects: int | None = None
    disconnect_seconds: int | None = None
    auth_failures: int | None = None
    authz_failures: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    packets_in: int | None = None
    packets_out: int | None = None
    established: int | None = None
    source_ips: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    #: listening ports as ``tcp/22``, ``udp/5683``
    listening_ports: tuple[str, ...] = ()
    source_ips_total: int = 0
    topics_total: int = 0
    destinations_total: int = 0
    listening_ports_total: int = 0
    cert_fingerprint: str | None = None
    firmware_version: str | None = None
    custom: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        """A numeric metric by name (``custom:<name>`` for custom ones); None if absent."""
        if metric in DERIVED:
            return float(getattr(self, DERIVED[metric] + "_total"))
        if metric.startswith("custom:"):
            return self.custom.get(metric[7:])
        v = getattr(self, metric, None)
        return None if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (contract ``fleetwarden.detect.metric_window/1``)."""
        out: dict[str, Any] = {"schema": SCHEMA, "device_id": self.device_id}
        out["start"] = self.start
        out["window_s"] = self.window_s
        for name in COUNTS:
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        for name in SETS:
            vals = getattr(self, name)
            if vals:
                out[name] = list(vals)
                total = getattr(self, name + "_total")
                if total != len(vals):
                    out[name + "_total"] = total
        if self.cert_fingerprint is not None:
            out["cert_fingerprint"] = self.cert_fingerprint
        if self.firmware_version is not None:
            out["firmware_version"] = self.firmware_version
        if self.custom:
            out["custom"] = dict(self.custom)
        return out


def _count(obj: Mapping[str, Any], name: str, device: str) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MetricRejectedError("bad_type", f"{name} must be a number", device_id=device)
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise MetricRejectedError(
                "bad_value", f"{name} must be a whole number", device_id=device
            )
        v = int(v)
    if v < 0:
        raise MetricRejectedError("negative", f"{name} is negative ({v})", device_id=device)
    if v > MAX_COUNT:
        raise MetricRejectedError("absurd", f"{name} is absurdly large ({v})", device_id=device)
    return v


def _str_list(
    obj: Mapping[str, Any], name: str, device: str, check: Callable[[str], str]
) -> tuple[tuple[str, ...], int]:
    raw = obj.get(name)
    if raw is None:
        return (), 0
    if not isinstance(raw, list):
        raise MetricRejectedError("bad_type", f"{name} must be a list", device_id=device)
    cap = MAX_LIST[name]
    seen: dict[str, None] = {}
    for item in raw[: cap * 4]:
        if not isinstance(item, str) or not item or len(item) > 256:
            raise MetricRejectedError("bad_value", f"{name}: invalid entry", device_id=device)
        try:
            seen[check(item)] = None
        except ValueError as exc:
            raise MetricRejectedError(
                "bad_value", f"{name}: {item[:64]!r} is invalid", device_id=device
            ) from exc
    # entries past the scanned prefix are counted, not parsed (a flood costs nothing)
    total_raw = obj.get(name + "_total", len(seen) + max(0, len(raw) - cap * 4))
    total = (
        total_raw
        if isinstance(total_raw, int) and not isinstance(total_raw, bool) and total_raw >= 0
        else len(seen)
    )
    vals = tuple(seen)[:cap]
    return vals, min(max(total, len(vals)), MAX_COUNT)


def _ip(s: str) -> str:
    return str(ipaddress.ip_address(s))


def _topic(s: str) -> str:
    if "\x00" in s:
        raise ValueError("NUL in topic")
    return s


def _port(s: str) -> str:
    proto, _, num = s.partition("/")
    n = int(num)
    if proto not in {"tcp", "udp"} or not 0 <= n <= 65535:
        raise ValueError("port must be tcp/N or udp/N with N in 0..65535")
    return f"{proto}/{n}"


def _short(obj: Mapping[str, Any], name: str, device: str) -> str | None:
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > 128:
        raise MetricRejectedError("bad_value", f"{name} must be a short string", device_id=device)
    return v


def parse_window(
    obj: Any,
    *,
    now: float | None = None,
    window_s: int = DEFAULT_WINDOW_S,
    custom_metrics: Iterable[str] = (),
) -> MetricWindow:
    """Validate one datapoint (wire form) into a :class:`MetricWindow`.

    Raises :class:`MetricRejectedError` with a stable ``reason`` code: ``bad_type``,
    ``missing``, ``bad_value``, ``negative``, ``absurd``, ``future``, ``stale``,
    ``unknown_custom``.
    """
    if not isinstance(obj, dict):
        raise MetricRejectedError("bad_type", "datapoint must be a JSON object")
    dev = obj.get("device_id")
    if not isinstance(dev, str) or not dev or len(dev) > MAX_ID:
        raise MetricRejectedError("missing", "device_id is missing or invalid")
    start = obj.get("start")
    if isinstance(start, bool) or not isinstance(start, int):
        raise MetricRejectedError("missing", "start (epoch seconds) is missing", device_id=dev)
    ws = obj.get("window_s", window_s)
    if ws != window_s:
        raise MetricRejectedError(
            "bad_value", f"window_s is {ws!r}, this detector runs {window_s}", device_id=dev
        )
    t = time.time() if now is None else now
    if start > t + FUTURE_SKEW_S:
        raise MetricRejectedError(
            "future", f"window starts {int(start - t)} s in the future", device_id=dev
        )
    if start < t - MAX_AGE_S:
        raise MetricRejectedError("stale", "window is older than two days", device_id=dev)
    mw = MetricWindow(device_id=dev, start=start - start % window_s, window_s=window_s)
    reported = 0
    for name in COUNTS:
        v = _count(obj, name, dev)
        if v is not None:
            setattr(mw, name, v)
            reported += 1
    mw.source_ips, mw.source_ips_total = _str_list(obj, "source_ips", dev, _ip)
    mw.topics, mw.topics_total = _str_list(obj, "topics", dev, _topic)
    mw.destinations, mw.destinations_total = _str_list(obj, "destinations", dev, _ip)
    mw.listening_ports, mw.listening_ports_total = _str_list(obj, "listening_ports", dev, _port)
    mw.cert_fingerprint = _short(obj, "cert_fingerprint", dev)
    mw.firmware_version = _short(obj, "firmware_version", dev)
    custom = obj.get("custom")
    if custom is not None:
        if not isinstance(custom, dict) or len(custom) > MAX_CUSTOM:
            raise MetricRejectedError("bad_type", "custom must be a small object", device_id=dev)
        allowed = set(custom_metrics)
        for key in custom:
            if key not in allowed:
                raise MetricRejectedError(
                    "unknown_custom",
                    f"custom metric {str(key)[:64]!r} is not declared",
                    device_id=dev,
                )
            v = _count(custom, key, dev)
            if v is not None:
                mw.custom[key] = float(v)
                reported += 1
    if reported == 0 and not (mw.source_ips or mw.topics or mw.destinations):
        raise MetricRejectedError("missing", "datapoint carries no metric", device_id=dev)
    return mw


@dataclass(frozen=True, slots=True)
class Rejection:
    """One refused datapoint, as kept in the intake's ring of recent refusals."""

    at: float
    reason: str
    device_id: str | None
    detail: str


class Intake:
    """The front door: validates datapoints, refuses unknown devices and floods.

    ``known`` answers whether the registry knows a device (the component refreshes it
    from the registry). At most ``max_per_window`` datapoints per device per window are
    accepted (an agent retry may legitimately send a window twice); more is a flood and
    refused. Memory: one small entry per known device plus a fixed ring of refusals.
    """

    def __init__(
        self,
        known: Callable[[str], bool],
        *,
        window_s: int = DEFAULT_WINDOW_S,
        max_per_window: int = 2,
        custom_metrics: Iterable[str] = (),
        keep_rejections: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.known = known
        self.window_s = window_s
        self.max_per_window = max_per_window
        self.custom_metrics = frozenset(custom_metrics)
        self.clock = clock
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.recent: deque[Rejection] = deque(maxlen=keep_rejections)
        # device -> (window start, datapoints seen for it)
        self._seen: dict[str, tuple[int, int]] = {}

    def _refuse(self, exc: MetricRejectedError) -> None:
        self.rejected[exc.reason] += 1
        self.recent.append(
            Rejection(at=self.clock(), reason=exc.reason, device_id=exc.device_id, detail=str(exc))
        )

    def offer(self, obj: Any) -> MetricWindow | None:
        """Validate one datapoint; return it, or record why it was refused and return None."""
        try:
            mw = parse_window(
                obj, now=self.clock(), window_s=self.window_s, custom_metrics=self.custom_metrics
            )
            if not self.known(mw.device_id):
                raise MetricRejectedError(
                    "unknown_device",
                    f"device {mw.device_id[:64]!r} is not in the registry",
                    device_id=mw.device_id,
                )
            last = self._seen.get(mw.device_id)
            if last is not None and last[0] == mw.start:
                if last[1] >= self.max_per_window:
                    raise MetricRejectedError(
                        "flood",
                        f"more than {self.max_per_window} datapoints for one window",
                        device_id=mw.device_id,
                    )
                self._seen[mw.device_id] = (mw.start, last[1] + 1)
            elif last is not None and mw.start < last[0]:
                raise MetricRejectedError(
                    "out_of_order", "window older than one already seen", device_id=mw.device_id
                )
            else:
                self._seen[mw.device_id] = (mw.start, 1)
        except MetricRejectedError as exc:
            self._refuse(exc)
            return None
        self.accepted += 1
        return mw

    def forget(self, device_id: str) -> None:
        """Drop per-device state (device removed from the registry)."""
        self._seen.pop(device_id, None)

    def summary(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.rejected)}
