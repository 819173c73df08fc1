"""Rules at parity with Device Defender Rules Detect.

A :class:`Rule` states what NORMAL looks like for one metric, as a Device Defender
behavior does: ``auth_failures less-than 5`` means a device with 5 or more failures in a
window violates the rule. Supported criteria:

- static thresholds: ``less-than``, ``less-than-equals``, ``greater-than``,
  ``greater-than-equals`` against ``value``;
- peer-group statistical thresholds: the same operators against ``statistic``
  (``p50``, ``p90``, ``p99``, ``p99.9``) of the device's group, from a streaming KLL
  quantile sketch (Apache DataSketches) over the previous completed epoch;
- CIDR sets (``in-cidr-set``/``not-in-cidr-set`` on ``source_ips``/``destinations``) and
  port sets (``in-port-set``/``not-in-port-set`` on ``listening_ports``);
- duration windows: the metric summed over the last ``duration_windows`` windows;
- ``consecutive_to_alarm`` violating datapoints raise, ``consecutive_to_clear`` normal
  datapoints clear.

Invariants: per-device state exists only while a device has a streak, an open alarm or
a duration ring, so memory is bounded by the fleet; a rule that cannot be evaluated
(metric not reported, no peer statistics yet) neither raises nor clears.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetwarden.detect.errors import RuleError
from fleetwarden.detect.metrics import COUNTS, DERIVED, MetricWindow

NUMERIC_OPS = {"less-than", "less-than-equals", "greater-than", "greater-than-equals"}
CIDR_OPS = {"in-cidr-set", "not-in-cidr-set"}
PORT_OPS = {"in-port-set", "not-in-port-set"}
STATISTICS = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
MAX_DURATION = 288


class AlertSeverity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class MitigationAction(StrEnum):
    QUARANTINE = "quarantine"
    REVOKE_CERTIFICATE = "revoke_certificate"
    DROP_SESSION = "drop_session"


class MitigationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: MitigationAction
    mode: Literal["auto", "approval"] = "approval"


class Rule(BaseModel):
    """One rule, as declared in a rules file or through the API."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    metric: str = Field(min_length=1, max_length=80)
    comparison: str
    value: float | None = None
    statistic: str | None = None
    cidrs: list[str] = Field(default_factory=list, max_length=256)
    ports: list[str] = Field(default_factory=list, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=64)
    duration_windows: int = Field(default=1, ge=1, le=MAX_DURATION)
    consecutive_to_alarm: int = Field(default=1, ge=1, le=100)
    consecutive_to_clear: int = Field(default=1, ge=1, le=100)
    severity: AlertSeverity = AlertSeverity.MEDIUM
    mitigation: MitigationSpec | None = None
    enabled: bool = True
    description: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        m, op = self.metric, self.comparison
        numeric_metric = m in COUNTS or m in DERIVED or m.startswith("custom:")
        if op in NUMERIC_OPS:
            if not numeric_metric:
                raise ValueError(f"{op} needs a numeric metric, not {m!r}")
            if (self.value is None) == (self.statistic is None):
                raise ValueError(f"{op} needs exactly one of value or statistic")
            if self.statistic is not None and self.statistic not in STATISTICS:
                raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}")
        elif op in CIDR_OPS:
            if m not in {"source_ips", "destinations"}:
                raise ValueError(f"{op} applies to source_ips or destinations, not {m!r}")
            if not self.cidrs:
                raise ValueError(f"{op} needs cidrs")
            for c in self.cidrs:
                ipaddress.ip_network(c, strict=False)
        elif op in PORT_OPS:
            if m != "listening_ports":
                raise ValueError(f"{op} applies to listening_ports, not {m!r}")
            if not self.ports:
                raise ValueError(f"{op} needs ports")
            for p in self.ports:
                _norm_port(p)
        else:
            raise ValueError(f"unknown comparison {op!r}")
        if self.duration_windows > 1 and op not in NUMERIC_OPS:
            raise ValueError("duration_windows applies to numeric metrics only")
        return self


def _norm_port(p: str) -> str:
    """``tcp/22``, ``udp/53`` or a bare ``22`` (both protocols)."""
    proto, sep, num = p.partition("/")
    if not sep:
        proto, num = "any", proto
    n = int(num)
    if proto not in {"tcp", "udp", "any"} or not 0 <= n <= 65535:
        raise ValueError(f"invalid port {p!r}")
    return f"{proto}/{n}"


def load_rules(path: Path) -> list[Rule]:
    """Read rules from a TOML or YAML file (``[[rules]]`` / ``rules:`` list)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RuleError(f"cannot read rules file {path}: {exc.strerror}") from exc
    if len(text) > 1 << 20:
        raise RuleError(f"rules file {path} is larger than 1 MiB")
    try:
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = tomllib.loads(text.decode())
    except Exception as exc:  # any parser error is the user's file, not our bug
        raise RuleError(f"{path}: not valid {path.suffix.lstrip('.')}: {exc}") from exc
    items = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RuleError(f"{path}: expected a list under 'rules'")
    return parse_rules(items, where=str(path))


def parse_rules(items: list[Any], *, where: str = "rules") -> list[Rule]:
    rules: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(items):
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(x) for x in e["loc"]) or "rule"
            raise RuleError(f"{where}: rule #{i + 1}: {loc}: {e['msg']}") from exc
        if rule.name in names:
            raise RuleError(f"{where}: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return rules


@dataclass(slots=True)
class RuleEvent:
    """A rule raised (``alarm``) or cleared (``clear``) for a device."""

    kind: Literal["alarm", "clear"]
    rule: Rule
    device_id: str
    start: int
    value: Any
    threshold: Any


class QuantileSketch:
    """Peer-group quantiles over epochs: thresholds come from the last complete epoch.

    A KLL sketch (Apache DataSketches, k=200: ~1.3 % rank error, a few KB) per group and
    metric. Thresholds are frozen per epoch, so a burst by many devices at once cannot
    drag its own threshold up while it happens, and the hot path reads a cached float.
    """

    __slots__ = ("_cur", "_epoch", "_prev_q", "epoch_s", "min_samples", "q")

    def __init__(self, q: float, *, epoch_s: int, min_samples: int = 50) -> None:
        from datasketches import kll_floats_sketch

        self.q = q
        self.epoch_s = epoch_s
        self.min_samples = min_samples
        self._cur = kll_floats_sketch(200)
        self._epoch = -1
        self._prev_q: float | None = None

    def update(self, start: int, value: float) -> None:
        epoch = start // self.epoch_s
        if epoch != self._epoch:
            if epoch > self._epoch >= 0:
                cur = self._cur
                if cur.n >= self.min_samples:
                    self._prev_q = float(cur.get_quantile(self.q))
                from datasketches import kll_floats_sketch

                self._cur = kll_floats_sketch(200)
            self._epoch = max(epoch, self._epoch)
        self._cur.update(value)

    def threshold(self) -> float | None:
        return self._prev_q


def _violates(op: str, value: float, threshold: float) -> bool:
    # the criterion describes normal; a violation is its negation
    if op == "less-than":
        return not value < threshold
    if op == "less-than-equals":
        return not value <= threshold
    if op == "greater-than":
        return not value > threshold
    return not value >= threshold


class _Compiled:
    __slots__ = (
        "cidrs",
        "groups",
        "inside_cache",
        "kind",
        "ports",
        "q",
        "rule",
        "sketches",
        "state",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.groups = frozenset(rule.groups)
        self.kind = (
            "num"
            if rule.comparison in NUMERIC_OPS
            else "cidr"
            if rule.comparison in CIDR_OPS
            else "port"
        )
        self.cidrs = [ipaddress.ip_network(c, strict=False) for c in rule.cidrs]
        self.ports = frozenset(_norm_port(p) for p in rule.ports)
        self.q = STATISTICS.get(rule.statistic or "")
        # address -> inside any CIDR; bounded (cleared when large), addresses repeat a lot
        self.inside_cache: dict[str, bool] = {}
        self.sketches: dict[str, QuantileSketch] = {}
        # device -> [violating streak, normal streak, in alarm, duration ring or None]
        self.state: dict[str, list[Any]] = {}


class RuleEngine:
    """Evaluates every enabled rule against each window of each device."""

    def __init__(self, rules: list[Rule], *, window_s: int = 300, epoch_windows: int = 288):
        self.window_s = window_s
        self.epoch_s = window_s * epoch_windows
        self._rules: list[_Compiled] = []
        self.set_rules(rules)

    def set_rules(self, rules: list[Rule]) -> None:
        """Replace the rule set; state of rules that keep their definition survives."""
        old = {c.rule.name: c for c in self._rules}
        new: list[_Compiled] = []
        for r in rules:
            if not r.enabled:
                continue
            prev = old.get(r.name)
            if prev is not None and prev.rule == r:
                new.append(prev)
            else:
                new.append(_Compiled(r))
        self._rules = new

    @property
    def rules(self) -> list[Rule]:
        return [c.rule for c in self._rules]

    def evaluate(self, mw: MetricWindow, groups: tuple[str, ...] = ()) -> list[RuleEvent]:
        out: list[RuleEvent] = []
        for c in self._rules:
            peer = "*"
            if c.groups:
                peer = next((g for g in groups if g in c.groups), "")
                if not peer:
                    continue
            elif groups:
                peer = groups[0]
            verdict = self._judge(c, mw, peer)
            if verdict is None:
                continue
            violated, value, threshold = verdict
            st = c.state.get(mw.device_id)
            if st is None:
                if not violated:
                    continue
                st = c.state[mw.device_id] = [0, 0, False, None]
            rule = c.rule
            if violated:
                st[0] += 1
                st[1] = 0
                if not st[2] and st[0] >= rule.consecutive_to_alarm:
                    st[2] = True
                    out.append(RuleEvent("alarm", rule, mw.device_id, mw.start, value, threshold))
            else:
                st[1] += 1
                st[0] = 0
                if st[2] and st[1] >= rule.consecutive_to_clear:
                    st[2] = False
                    out.append(RuleEvent("clear", rule, mw.device_id, mw.start, value, threshold))
            if not st[0] and not st[2] and st[3] is None:
                del c.state[mw.device_id]
        return out

    def _judge(self, c: _Compiled, mw: MetricWindow, peer: str) -> tuple[bool, Any, Any] | None:
        rule = c.rule
        if c.kind == "num":
            v = mw.value(rule.metric)
            if v is None:
                return None
            if rule.duration_windows > 1:
                st = c.state.get(mw.device_id)
                if st is None:
                    st = c.state[mw.device_id] = [0, 0, False, None]
                if st[3] is None:
                    st[3] = deque(maxlen=rule.duration_windows)
                ring: deque[float] = st[3]
                ring.append(v)
                v = sum(ring)
            if c.q is not None:
                sk = c.sketches.get(peer)
                if sk is None:
                    sk = c.sketches[peer] = QuantileSketch(c.q, epoch_s=self.epoch_s)
                sk.update(mw.start, v)
                thr = sk.threshold()
                if thr is None:
                    return None
            else:
                thr = rule.value
            assert thr is not None
            return _violates(rule.comparison, v, thr), v, thr
        if c.kind == "cidr":
            addrs = mw.source_ips if rule.metric == "source_ips" else mw.destinations
            if not addrs:
                return None
            inside = rule.comparison == "in-cidr-set"
            cache = c.inside_cache
            bad = []
            for a in addrs:
                hit = cache.get(a)
                if hit is None:
                    if len(cache) > 65536:
                        cache.clear()
                    ip = ipaddress.ip_address(a)
                    hit = cache[a] = any(ip in n for n in c.cidrs)
                if hit is not inside:
                    bad.append(a)
            return bool(bad), bad or list(addrs), rule.cidrs
        ports = mw.listening_ports
        if not ports and mw.listening_ports_total == 0:
            # an empty list is a report ("nothing listens") only if the agent sent it
            return None
        inside = rule.comparison == "in-port-set"
        bad = [
            p
            for p in ports
            if ((p in c.ports) or ("any/" + p.partition("/")[2] in c.ports)) is not inside
        ]
        return bool(bad), bad or list(ports), rule.ports

    def forget(self, device_id: str) -> None:
        for c in self._rules:
            c.state.pop(device_id, None)
