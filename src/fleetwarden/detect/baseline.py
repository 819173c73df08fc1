"""Learned behaviour: compact per-device baselines and novelty.

For each device and each metric in :data:`BASELINE_METRICS` the baseline keeps, in log
space (``log1p`` of the per-window count, so heavy-tailed counts become tame):

- a level per hour of day for weekdays and another for weekends (48 values): the daily
  pattern and the weekly one, an hour-of-week profile at two sevenths of the size;
- a robust scale per 6-hour block: the mean absolute deviation of residuals, each
  clipped at ``CLIP`` scales (Huber), i.e. a streaming M-estimate between mean/MAD and
  median/MAD: one outlier moves it by a bounded step;
- byte counts read as ``unit x (messages + overhead)``: a learned bytes-per-message unit
  (``U_OFF``) and a learned per-window overhead in message units (``O_OFF``, from windows
  with at most 2 messages), so bytes no message explains stand out even in a window
  with no message (slow drip in a quiet hour);
- a one-sided CUSUM of the standardised residual, capped at twice its interval, which
  catches sustained moderate increases that no single window shows and clears soon
  after they end.

Novelty: 32-bit CRC hashes of source networks, topics, destination networks, listening
ports, certificate fingerprint and firmware version, in fixed slots. After the learning
period an unseen value is a finding. Certificates and firmware announced by the
registry (renewal, signed rollout) are added with :meth:`Baselines.expect` and are
therefore never novel.

Invariants:
- state per device is two fixed-size arrays and four ints (measured by
  :func:`state_bytes`, < 2 KB); nothing grows with traffic;
- while a metric is anomalous its level is not updated (the attack is not learned);
- until a device has learned for ``learning_windows`` it is judged against its peer
  group's profile (cold start), with novelty off.
"""

from __future__ import annotations

import math
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.detect.metrics import MetricWindow

BASELINE_METRICS = (
    "messages_sent",
    "bytes_sent",
    "bytes_out",
    "connection_attempts",
    "auth_failures",
    "authz_failures",
)
NM = len(BASELINE_METRICS)
#: 24 weekday + 24 weekend hourly levels, 4 block scales, cusum, byte unit, byte overhead
STRIDE = 55
S_OFF = 48
C_OFF = 52
U_OFF = 53
O_OFF = 54
#: byte metrics are judged in "message equivalents" (bytes / learned bytes per message):
#: bytes are a compound count, zero-inflated at low rates (0 or a whole payload), which
#: a log scale alone would read as wild swings
BYTE_METRICS = {1: 0, 2: 0}  # metric index -> index of the message count it rides on
CLIP = 3.0
_VOLUME_MASK = 0b111  # messages_sent, bytes_sent, bytes_out
#: novelty kinds and their slot counts in the hash array
NOVELTY = (
    ("source_network", 6),
    ("topic", 16),
    ("destination", 12),
    ("listening_port", 10),
    ("certificate", 2),
    ("firmware", 2),
)
_NOV_OFF: dict[str, tuple[int, int]] = {}
_o = 0
for _k, _n in NOVELTY:
    _NOV_OFF[_k] = (_o, _n)
    _o += _n
NSLOTS = _o


@dataclass(slots=True)
class BaselineConfig:
    """Per-group tuning (see docs/detect.md, "Tuning")."""

    #: windows a device learns before its own baseline and novelty judge it (7 days)
    learning_windows: int = 7 * 288
    #: >1 is more sensitive (lower thresholds), <1 less
    sensitivity: float = 1.0
    #: single-window threshold, in robust standard deviations
    z_alarm: float = 7.0
    #: CUSUM reference and decision interval
    cusum_k: float = 1.5
    cusum_h: float = 7.0
    #: scale floor in log1p units: below it noise is not "normal variation" but quantisation
    scale_floor: float = 0.12
    #: noise floor of a byte metric in a window with few messages, in log1p units at zero
    #: messages (divided by sqrt(1 + expected messages)): the byte count of a quiet window
    #: is the device's fixed per-window overhead, not a compound of Poisson messages
    byte_floor: float = 0.15
    #: slowest learning rate (per sample of an hour bucket)
    alpha_min: float = 0.03
    #: IPv4/IPv6 prefix lengths that make a "network" for source and destination novelty
    source_prefix_v4: int = 16
    dest_prefix_v4: int = 24
    prefix_v6: int = 48
    novelty: tuple[str, ...] = tuple(k for k, _ in NOVELTY)


@dataclass(slots=True)
class Finding:
    """A baseline or novelty finding for one device and window."""

    kind: str  # "deviation" | "novelty" | "cold_start"
    device_id: str
    start: int
    metric: str
    value: Any
    expected: Any = None
    score: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class DeviceBaseline:
    """The whole learned state of one device (see module docstring)."""

    __slots__ = ("alarm", "c", "fp", "h", "lv", "n", "open_kinds")

    def __init__(self, init: array | None = None) -> None:  # type: ignore[type-arg]
        self.lv = init[:] if init is not None else array("f", bytes(4 * NM * STRIDE))
        self.h = array("I", bytes(4 * NSLOTS))
        self.n = 0
        # samples per hour bucket (saturating at 255): each bucket learns at its own pace
        self.c = bytearray(48)
        self.alarm = 0  # bit i: metric i in alarm
        self.open_kinds = 0  # bit j: novelty kind j saturated during learning
        # hash of the last window's identity items once all were known: a device that
        # repeats itself (the common case) skips novelty work entirely; not persisted
        self.fp = 0

    def to_bytes(self) -> bytes:
        """Serialised form (persistence, sharding hand-over)."""
        head = self.n.to_bytes(4, "little") + bytes(self.c)
        head += self.alarm.to_bytes(2, "little")
        return head + self.open_kinds.to_bytes(2, "little") + self.lv.tobytes() + self.h.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DeviceBaseline:
        b = cls()
        b.n = int.from_bytes(raw[0:4], "little")
        b.c = bytearray(raw[4:52])
        b.alarm = int.from_bytes(raw[52:54], "little")
        b.open_kinds = int.from_bytes(raw[54:56], "little")
        nlv = 4 * NM * STRIDE
        b.lv = array("f")
        b.lv.frombytes(raw[56 : 56 + nlv])
        b.h = array("I")
        b.h.frombytes(raw[56 + nlv : 56 + nlv + 4 * NSLOTS])
        return b


def state_bytes(b: DeviceBaseline) -> int:
    """In-memory size of one device's state: the object and its two arrays."""
    return sys.getsizeof(b) + sys.getsizeof(b.lv) + sys.getsizeof(b.h) + sys.getsizeof(b.c)


def _crc(s: str) -> int:
    return zlib.crc32(s.encode()) or 1  # 0 marks an empty slot


def _network(ip: str, v4: int, v6: int) -> str:
    # cheap textual prefix for the common IPv4 /8, /16, /24 cases; ipaddress otherwise
    if ":" not in ip and v4 in (8, 16, 24):
        parts = ip.split(".")
        return ".".join(parts[: v4 // 8]) + f"/{v4}"
    import ipaddress

    return str(ipaddress.ip_network(f"{ip}/{v4 if ':' not in ip else v6}", strict=False))


def _hour_parts(start: int) -> tuple[int, int, bool]:
    hour = (start // 3600) % 24
    # 1970-01-01 was a Thursday: day index 0 = Thursday; Saturday = 2, Sunday = 3
    dow = (start // 86400) % 7
    return hour, hour // 6, dow in (2, 3)


class Baselines:
    """All device baselines of one detector, plus group profiles for cold start."""

    def __init__(self, configs: dict[str, BaselineConfig] | None = None) -> None:
        self.configs = configs or {}
        self.default = self.configs.get("*", BaselineConfig())
        self.devices: dict[str, DeviceBaseline] = {}
        self.groups: dict[str, DeviceBaseline] = {}
        #: standardised residual per metric of the last window observed (0 if absent)
        self.last_z: list[float] = [0.0] * NM

    def config_for(self, groups: tuple[str, ...]) -> BaselineConfig:
        for g in groups:
            c = self.configs.get(g)
            if c is not None:
                return c
        return self.default

    def expect(
        self, device_id: str, *, certificate: str | None = None, firmware: str | None = None
    ) -> None:
        """Announce a legitimate certificate or firmware (renewal, signed rollout)."""
        b = self.devices.get(device_id)
        if b is None:
            b = self.devices[device_id] = DeviceBaseline()
        if certificate:
            self._remember(b, "certificate", _crc(certificate), replace=True)
        if firmware:
            self._remember(b, "firmware", _crc(firmware), replace=True)

    @staticmethod
    def _remember(b: DeviceBaseline, kind: str, hv: int, *, replace: bool = False) -> bool:
        """Add a hash; False if the kind's slots are full (and ``replace`` is not set)."""
        off, n = _NOV_OFF[kind]
        h = b.h
        for i in range(off, off + n):
            if h[i] == hv:
                return True
            if h[i] == 0:
                h[i] = hv
                return True
        if replace:
            # keep the newest: shift left, append (certificates and firmware: 2 slots)
            for i in range(off, off + n - 1):
                h[i] = h[i + 1]
            h[off + n - 1] = hv
            return True
        return False

    @staticmethod
    def _known(b: DeviceBaseline, kind: str, hv: int) -> bool:
        off, n = _NOV_OFF[kind]
        return hv in b.h[off : off + n]

    def observe(self, mw: MetricWindow, groups: tuple[str, ...] = ()) -> list[Finding]:
        """Score one window against the device's baseline, then learn from it."""
        cfg = self.config_for(groups)
        b = self.devices.get(mw.device_id)
        if b is None:
            gp = self.groups.get(groups[0]) if groups else None
            b = self.devices[mw.device_id] = DeviceBaseline(gp.lv if gp is not None else None)
            if gp is not None:
                # levels from the group, but own cusum and no inherited alarm
                for i in range(NM):
                    b.lv[i * STRIDE + C_OFF] = 0.0
        learning = b.n < cfg.learning_windows
        findings: list[Finding] = []
        hour, block, weekend = _hour_parts(mw.start)
        slot = hour + 24 if weekend else hour
        gkey = groups[0] if groups else "*"
        gp = self.groups.get(gkey)
        if gp is None:
            gp = self.groups[gkey] = DeviceBaseline()
        sens = cfg.sensitivity
        z_alarm = cfg.z_alarm / sens
        h_alarm = cfg.cusum_h / sens
        k = cfg.cusum_k
        floor = cfg.scale_floor
        lv = b.lv
        glv = gp.lv
        last_z = self.last_z
        n_slot = b.c[slot] + 1
        alpha = max(1.0 / n_slot, cfg.alpha_min)
        galpha = max(1.0 / (gp.c[slot] + 1), cfg.alpha_min / 4)
        for i in range(NM):
            raw = getattr(mw, BASELINE_METRICS[i])
            if raw is None:
                last_z[i] = 0.0
                continue
            base = i * STRIDE
            if i in BYTE_METRICS:
                unit = lv[base + U_OFF]
                msgs = getattr(mw, BASELINE_METRICS[BYTE_METRICS[i]])
                ovh = lv[base + O_OFF]
                # nothing is learned while any volume metric of the device is in alarm:
                # bytes of an attack must not become the device's unit or overhead
                calm = learning or not b.alarm & _VOLUME_MASK
                if msgs and calm:
                    ratio = raw / msgs
                    ua = 1.0 / (b.n + 1) if learning else 0.001
                    unit = lv[base + U_OFF] = unit + max(ua, 0.001) * (ratio - unit)
                if unit > 1.0:
                    u = raw / unit
                    if msgs is not None and msgs <= 2 and calm:
                        # the per-window overhead (keep-alives, the agent's own reports)
                        # in message units, learned from windows with few messages
                        obs = u - msgs
                        obs = 0.0 if obs < 0.0 else min(obs, 2.0 * ovh + 0.5)
                        ovh = lv[base + O_OFF] = ovh + (0.05 if learning else 0.002) * (obs - ovh)
                else:
                    u = raw / 512.0
                x = math.log1p(u)
                if msgs is not None:
                    # bytes against what the window's messages plus the device's overhead
                    # explain: the device's own traffic noise cancels out, and extra bytes
                    # (slow drip) stand out even in a window with no message at all
                    expected = msgs + ovh
                    x -= math.log1p(expected)
                    if math.log1p(msgs) < lv[slot] - 1.4:
                        # far fewer messages than this hour has (a quarter): the overhead
                        # is extrapolated for this device, so the wide Poisson floor
                        count_floor = 0.5 / math.sqrt(1.0 + msgs)
                    else:
                        count_floor = cfg.byte_floor / math.sqrt(1.0 + expected)
                else:
                    count_floor = 0.5 / math.sqrt(1.0 + math.expm1(lv[base + slot]))
            else:
                x = math.log1p(raw)
                count_floor = 0.5 / math.sqrt(1.0 + math.expm1(lv[base + slot]))
            # the group profile learns from everyone (cold-start prior)
            gl = glv[base + slot]
            gs = glv[base + S_OFF + block]
            gr = x - gl
            glim = CLIP * max(gs, floor) if galpha < 0.3 else 1e9
            gclip = gr if -glim < gr < glim else math.copysign(glim, gr)
            # while learning, judge against the group with a wide margin: a prior only
            if learning and gp.n > cfg.learning_windows and gs > 0:
                gz = gr / max(1.25 * gs, floor, 0.5 / math.sqrt(1.0 + math.expm1(gl)))
                if gz > 2 * z_alarm and not (b.alarm >> i) & 1:
                    b.alarm |= 1 << i
                    findings.append(
                        Finding(
                            "cold_start",
                            mw.device_id,
                            mw.start,
                            BASELINE_METRICS[i],
                            raw,
                            round(math.expm1(gl), 1),
                            round(gz, 1),
                        )
                    )
                elif gz < z_alarm:
                    b.alarm &= ~(1 << i)
            level = lv[base + slot]
            scale = lv[base + S_OFF + block]
            r = x - level
            # Poisson floor: a count near 1 cannot be judged with a 12 % scale
            s = max(1.25 * scale, floor, count_floor)
            z = r / s
            last_z[i] = z
            anomalous = False
            if not learning:
                cus = lv[base + C_OFF] + (z if z < 6.0 else 6.0) - k
                if cus < 0.0:
                    cus = 0.0
                elif cus > 2.0 * h_alarm:
                    # capped: after a long attack the alarm clears within ~10 windows, so
                    # the next attack on the device is a new alert, not a repeat
                    cus = 2.0 * h_alarm
                lv[base + C_OFF] = cus
                anomalous = z > z_alarm or cus > h_alarm
                if anomalous:
                    if not (b.alarm >> i) & 1:
                        b.alarm |= 1 << i
                        findings.append(
                            Finding(
                                "deviation",
                                mw.device_id,
                                mw.start,
                                BASELINE_METRICS[i],
                                raw,
                                round(math.expm1(level), 1),
                                round(max(z, cus), 1),
                                {"z": round(z, 2), "cusum": round(cus, 2), "hour": hour},
                            )
                        )
                elif (b.alarm >> i) & 1 and z < 2.0 and cus == 0.0:
                    b.alarm &= ~(1 << i)
            if not anomalous:
                # the first samples of a bucket set it outright; Huber clipping after that
                lim = CLIP * max(scale, floor) if n_slot > 3 else 1e9
                rc = r if -lim < r < lim else math.copysign(lim, r)
                if (b.alarm >> i) & 1:
                    # a shift that persists is absorbed over days, never within an attack
                    lv[base + slot] += cfg.alpha_min * 0.25 * rc
                    continue
                lv[base + slot] += alpha * rc
                lv[base + S_OFF + block] += alpha * 0.5 * ((rc if rc > 0 else -rc) - scale)
            # group profile
            glv[base + slot] += galpha * 0.2 * gclip
            glv[base + S_OFF + block] += galpha * 0.2 * ((gclip if gclip > 0 else -gclip) - gs)
        gp.n += 1
        self._novelty(b, mw, cfg, learning, findings)
        b.n += 1
        if b.c[slot] < 255:
            b.c[slot] += 1
        if gp.c[slot] < 255:
            gp.c[slot] += 1
        return findings

    def _novelty(
        self,
        b: DeviceBaseline,
        mw: MetricWindow,
        cfg: BaselineConfig,
        learning: bool,
        findings: list[Finding],
    ) -> None:
        fp = hash(
            (
                mw.source_ips,
                mw.topics,
                mw.destinations,
                mw.listening_ports,
                mw.cert_fingerprint,
                mw.firmware_version,
            )
        )
        if fp == b.fp and not learning:
            return
        kinds = cfg.novelty
        items: list[tuple[str, str]] = []
        if "source_network" in kinds:
            items += [
                ("source_network", _network(ip, cfg.source_prefix_v4, cfg.prefix_v6))
                for ip in mw.source_ips
            ]
        if "topic" in kinds:
            items += [("topic", t) for t in mw.topics]
        if "destination" in kinds:
            items += [
                ("destination", _network(ip, cfg.dest_prefix_v4, cfg.prefix_v6))
                for ip in mw.destinations
            ]
        if "listening_port" in kinds:
            items += [("listening_port", p) for p in mw.listening_ports]
        if "certificate" in kinds and mw.cert_fingerprint:
            items.append(("certificate", mw.cert_fingerprint))
        if "firmware" in kinds and mw.firmware_version:
            items.append(("firmware", mw.firmware_version))
        if not items:
            return
        b.fp = fp
        new: dict[str, list[str]] = {}
        for kind, value in items:
            hv = _crc(value)
            if self._known(b, kind, hv):
                continue
            bit = 1 << _KIND_INDEX[kind]
            replace = kind in ("certificate", "firmware")
            if learning:
                if not self._remember(b, kind, hv, replace=replace):
                    b.open_kinds |= bit  # too diverse to judge: novelty off for this kind
                continue
            if b.open_kinds & bit:
                continue
            new.setdefault(kind, []).append(value)
            # remembered while there is room; never at the expense of a learned value
            # (a topic scan must not push the device's real topics out)
            self._remember(b, kind, hv, replace=replace)
        for kind, values in new.items():
            findings.append(
                Finding(
                    "novelty",
                    mw.device_id,
                    mw.start,
                    kind,
                    values[:8],
                    detail={"count": len(values)},
                    score=float(len(values)),
                )
            )

    def forget(self, device_id: str) -> None:
        self.devices.pop(device_id, None)

    # persistence: a restart must not forget a week of learning --------------------------

    def dumps(self) -> bytes:
        """Snapshot of every device and group profile: ``FWBL2`` magic, records
        (tag, key, state), CRC-32 of all that at the end."""
        out = [MAGIC]
        for tag, table in ((b"D", self.devices), (b"G", self.groups)):
            for key, b in table.items():
                k = key.encode()
                st = b.to_bytes()
                out.append(tag + len(k).to_bytes(2, "little") + k + len(st).to_bytes(4, "little"))
                out.append(st)
        body = b"".join(out)
        return body + zlib.crc32(body).to_bytes(4, "little")

    def loads(self, raw: bytes) -> int:
        """Load a snapshot; return the number of devices. A damaged snapshot loads nothing
        (and raises ``ValueError``): a half-read baseline would judge devices wrongly."""
        if raw.startswith(b"FWBL1\n"):
            raise ValueError("baseline snapshot of an older format (FWBL1): relearning")
        if not raw.startswith(MAGIC):
            raise ValueError("not a baseline snapshot (bad magic)")
        raw, crc = raw[:-4], raw[-4:]
        if zlib.crc32(raw).to_bytes(4, "little") != crc:
            raise ValueError("baseline snapshot damaged (checksum)")
        devices: dict[str, DeviceBaseline] = {}
        groups: dict[str, DeviceBaseline] = {}
        i = len(MAGIC)
        want = _STATE_LEN
        while i < len(raw):
            tag = raw[i : i + 1]
            kl = int.from_bytes(raw[i + 1 : i + 3], "little")
            key = raw[i + 3 : i + 3 + kl].decode()
            j = i + 3 + kl
            sl = int.from_bytes(raw[j : j + 4], "little")
            if tag not in (b"D", b"G") or sl != want or j + 4 + sl > len(raw):
                raise ValueError(f"baseline snapshot damaged at byte {i}")
            b = DeviceBaseline.from_bytes(raw[j + 4 : j + 4 + sl])
            (devices if tag == b"D" else groups)[key] = b
            i = j + 4 + sl
        self.devices, self.groups = devices, groups
        return len(devices)


_KIND_INDEX = {k: i for i, (k, _) in enumerate(NOVELTY)}
MAGIC = b"FWBL2\n"  # 2: byte overhead per metric (55 floats)
_STATE_LEN = len(DeviceBaseline().to_bytes())
