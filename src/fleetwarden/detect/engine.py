"""The detector: rules, baselines and the multivariate second opinion on each window.

:class:`Detector` is synchronous and does no I/O, so the same object runs inside
``fleetwarden up`` (fed from the bus), in the evaluation harness and in benchmarks.
It turns every window into zero or more :class:`Signal` objects: an ``alarm`` opens
(or refreshes) an alert keyed by ``(device, key)``; a ``clear`` lets a rule's alert
resolve itself.

Invariants: one signal per (device, key) while it is open (dedup happens here, before
any storage); findings of the learned detectors never carry a mitigation (only rules
declare them), so automatic action is always the operator's explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fleetwarden.detect.baseline import BaselineConfig, Baselines, Finding
from fleetwarden.detect.metrics import MetricWindow
from fleetwarden.detect.multivariate import SecondOpinion
from fleetwarden.detect.rules import AlertSeverity, MitigationSpec, Rule, RuleEngine, RuleEvent

_NOVELTY_SEVERITY = {
    "source_network": AlertSeverity.HIGH,
    "certificate": AlertSeverity.CRITICAL,
    "firmware": AlertSeverity.CRITICAL,
    "listening_port": AlertSeverity.HIGH,
    "destination": AlertSeverity.MEDIUM,
    "topic": AlertSeverity.MEDIUM,
}


@dataclass(slots=True)
class Signal:
    """What the detector concluded about one device in one window."""

    kind: Literal["alarm", "clear"]
    device_id: str
    key: str  # "rule:<name>", "baseline:<metric>", "novelty:<kind>", "cold_start:<metric>"
    start: int
    severity: AlertSeverity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    mitigation: MitigationSpec | None = None


def _from_rule(ev: RuleEvent) -> Signal:
    r = ev.rule
    if r.statistic:
        crit = f"{r.comparison} {r.statistic} of group ({ev.threshold:g})"
    elif r.value is not None:
        crit = f"{r.comparison} {r.value:g}"
    else:
        crit = f"{r.comparison} {', '.join(map(str, ev.threshold))}"
    dur = f" over {r.duration_windows} windows" if r.duration_windows > 1 else ""
    return Signal(
        kind=ev.kind,
        device_id=ev.device_id,
        key=f"rule:{r.name}",
        start=ev.start,
        severity=r.severity,
        title=f"rule {r.name}: {r.metric}{dur} should be {crit}",
        evidence={
            "rule": r.name,
            "metric": r.metric,
            "value": ev.value,
            "threshold": ev.threshold,
            "comparison": r.comparison,
            "duration_windows": r.duration_windows,
        },
        mitigation=r.mitigation,
    )


def _from_finding(f: Finding) -> Signal:
    if f.kind == "novelty":
        sev = _NOVELTY_SEVERITY.get(f.metric, AlertSeverity.MEDIUM)
        title = f"new {f.metric.replace('_', ' ')} after learning: {', '.join(map(str, f.value))}"
    elif f.kind == "cold_start":
        sev = AlertSeverity.MEDIUM
        title = f"{f.metric} far above the peer group while learning ({f.value} vs ~{f.expected})"
    else:
        sev = AlertSeverity.HIGH if f.score >= 12 else AlertSeverity.MEDIUM
        title = f"{f.metric} above this device's baseline ({f.value} vs ~{f.expected})"
    evidence: dict[str, Any] = {
        "detector": f.kind,
        "metric": f.metric,
        "value": f.value,
        "expected": f.expected,
        "score": f.score,
    }
    evidence.update(f.detail)
    return Signal(
        kind="alarm",
        device_id=f.device_id,
        key=f"{'baseline' if f.kind == 'deviation' else f.kind}:{f.metric}",
        start=f.start,
        severity=sev,
        title=title,
        evidence=evidence,
    )


_ORDER = list(AlertSeverity)
#: deviations of correlated metrics are one alert: one event moves them together
FAMILY = {
    "messages_sent": "volume",
    "bytes_sent": "volume",
    "bytes_out": "volume",
    "connection_attempts": "connections",
    "auth_failures": "auth",
    "authz_failures": "auth",
}


def _merge(signals: list[Signal]) -> list[Signal]:
    merged: dict[str, Signal] = {}
    out: list[Signal] = []
    for sig in signals:
        if not sig.key.startswith(("baseline:", "cold_start:")):
            out.append(sig)
            continue
        kind, metric = sig.key.split(":", 1)
        fam = f"{kind}:{FAMILY.get(metric, metric)}"
        first = merged.get(fam)
        if first is None:
            sig.key = fam
            sig.evidence = {"metrics": {metric: sig.evidence}}
            merged[fam] = sig
            out.append(sig)
        else:
            first.evidence["metrics"][metric] = sig.evidence
            if _ORDER.index(sig.severity) > _ORDER.index(first.severity):
                first.severity = sig.severity
            first.title += f"; {metric}"
    return out


class Detector:
    """Rules + baselines (+ optional multivariate second opinion) for one fleet shard."""

    def __init__(
        self,
        rules: list[Rule] | None = None,
        *,
        baselines: dict[str, BaselineConfig] | None = None,
        window_s: int = 300,
        multivariate: bool = False,
        seed: int = 0,
        dedup_windows: int = 12,
    ) -> None:
        self.rules = RuleEngine(rules or [], window_s=window_s)
        self.baselines = Baselines(baselines)
        self.second = SecondOpinion(seed=seed) if multivariate else None
        self.windows = 0
        self.window_s = window_s
        self.dedup_s = dedup_windows * window_s
        # (device, key) -> start of the last alarm window: an alarm within the horizon
        # refreshes the open alert instead of opening another; pruned as time moves on
        self._open: dict[tuple[str, str], int] = {}
        self._pruned_at = 0

    def process(self, mw: MetricWindow, groups: tuple[str, ...] = ()) -> list[Signal]:
        self.windows += 1
        out = [_from_rule(ev) for ev in self.rules.evaluate(mw, groups)]
        findings = self.baselines.observe(mw, groups)
        if findings:
            out += _merge([_from_finding(f) for f in findings])
        if self.second is not None:
            self.second.z = self.baselines.last_z
            score = self.second.observe(groups, flagged=bool(out))
            for sig in out:
                if score is None:
                    break
                if sig.kind == "alarm":
                    sig.evidence["multivariate_score"] = round(score, 3)
                    if score >= self.second.threshold:
                        # the second opinion agrees: one step more severe
                        i = _ORDER.index(sig.severity)
                        sig.severity = _ORDER[min(i + 1, len(_ORDER) - 1)]
                        sig.evidence["multivariate_agrees"] = True
        if out:
            out = self._dedup(out, mw.start)
        return out

    def _dedup(self, signals: list[Signal], now: int) -> list[Signal]:
        kept: list[Signal] = []
        for sig in signals:
            k = (sig.device_id, sig.key)
            if sig.kind == "clear":
                self._open.pop(k, None)
                kept.append(sig)
                continue
            last = self._open.get(k)
            self._open[k] = now
            if last is None or now - last > self.dedup_s:
                kept.append(sig)
            else:
                sig.evidence["repeat"] = True  # refreshes the open alert (count, last seen)
                kept.append(sig)
        if now - self._pruned_at > self.dedup_s:
            self._pruned_at = now
            horizon = now - self.dedup_s
            self._open = {k: t for k, t in self._open.items() if t >= horizon}
        return kept

    def expect(
        self, device_id: str, *, certificate: str | None = None, firmware: str | None = None
    ) -> None:
        self.baselines.expect(device_id, certificate=certificate, firmware=firmware)

    def forget(self, device_id: str) -> None:
        self.rules.forget(device_id)
        self.baselines.forget(device_id)
