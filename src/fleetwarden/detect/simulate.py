"""A seeded simulated fleet with labelled attacks, and the quality evaluation over it.

Normal behaviour (every parameter drawn per device from the seed):
- three device kinds: ``meter`` (flat 24/7 telemetry), ``office`` (weekday working
  hours, near-silent nights and weekends), ``tracker`` (daily sinusoid, quieter
  weekends); a per-device time-zone offset, base rate (log-normal across devices),
  payload size and noise level;
- Poisson counts times log-normal noise, with rare heavy-tail spikes (x1.5-3);
- reconnects (connection attempt, disconnect and its duration), rare single auth and
  authz failures, source-address churn inside the device's APN pool, legitimate
  certificate renewals and firmware rollouts announced by the registry, devices that
  join mid-run (cold start from their peer group).

Attacks (:data:`SCENARIOS`), each with its parameter ranges in :class:`ScenarioParams`
and drawn per instance from the seed: credential stuffing, a cloned certificate used
from a new network, exfiltration bursts, slow-drip exfiltration, topic scanning,
off-hours activity, a new listening port (backdoor), a certificate or firmware swap.

Scoring (:func:`evaluate`): an attack instance is detected when an alert opens on its
device between its first window and ``grace`` windows after its last; latency is
counted in windows with the first attack window as 1. Every other alert opening is a
false alert. Precision of a scenario = its true alerts / (its true alerts + false
alerts on its devices).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetwarden.detect.baseline import BaselineConfig
from fleetwarden.detect.engine import Detector
from fleetwarden.detect.metrics import MetricWindow
from fleetwarden.detect.rules import Rule

SCENARIOS = (
    "credential_stuffing",
    "cloned_cert",
    "exfil_burst",
    "slow_drip",
    "topic_scan",
    "off_hours",
    "backdoor_port",
    "cert_or_firmware_swap",
)
KINDS = ("meter", "office", "tracker")
DAY = 86400


@dataclass
class ScenarioParams:
    """Ranges each attack instance draws from (all configurable; see --param)."""

    stuffing_failures: tuple[int, int] = (10, 400)
    stuffing_windows: tuple[int, int] = (2, 24)
    clone_windows: tuple[int, int] = (6, 48)
    clone_msgs_factor: tuple[float, float] = (0.2, 2.0)
    burst_factor: tuple[float, float] = (8.0, 100.0)
    burst_windows: tuple[int, int] = (1, 3)
    #: the drip rate: extra bytes per window = factor x the device's bytes in a window of
    #: that hour carrying at least one message (payload x 1.15 + 400 B overhead); in a
    #: quiet hour of an office device that is 0.6-6.9 KB per window (payloads 80-900 B)
    drip_factor: tuple[float, float] = (1.5, 4.0)
    drip_windows: tuple[int, int] = (36, 144)
    #: share of drips that go to a destination the device never talked to (novelty)
    drip_new_destination: float = 0.5
    scan_topics: tuple[int, int] = (15, 200)
    scan_denied: tuple[float, float] = (0.5, 1.0)
    scan_windows: tuple[int, int] = (1, 6)
    offhours_factor: tuple[float, float] = (0.5, 2.0)
    offhours_windows: tuple[int, int] = (2, 12)
    backdoor_windows: tuple[int, int] = (12, 100)
    swap_windows: tuple[int, int] = (6, 60)


@dataclass
class FleetParams:
    devices: int = 300
    days: int = 12
    learning_days: int = 5
    instances: int = 15  # attack instances per scenario
    join_fraction: float = 0.05  # devices that join mid-run (cold start)
    agent_fraction: float = 0.8  # devices that report device-side metrics
    noise: tuple[float, float] = (0.05, 0.3)
    spike_prob: float = 0.002
    reconnect_prob: float = 0.003
    glitch_prob: float = 0.0005
    ip_churn_prob: float = 1 / 288
    renewals: float = 0.1  # fraction of devices whose certificate is renewed in the run
    rollout_groups: int = 1  # groups that get a legitimate firmware rollout in the run
    grace: int = 12


@dataclass
class _Dev:
    id: str
    kind: str
    group: str
    rate: float
    payload: float
    noise: float
    tz: int
    rx: float
    agent: bool
    pool: int
    ip: str
    topics: tuple[str, ...]
    dests: tuple[str, ...]
    ports: tuple[str, ...]
    cert: str
    fw: str
    joins_at: int = 0


@dataclass
class Attack:
    scenario: str
    device_id: str
    start: int  # window index
    end: int  # last window index (inclusive)
    params: dict[str, Any] = field(default_factory=dict)


def _activity(d: _Dev, t: int) -> float:
    lt = t + d.tz * 3600
    hour = (lt // 3600) % 24 + (lt % 3600) / 3600
    dow = (lt // DAY + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    weekend = dow >= 5
    if d.kind == "meter":
        return 1.0
    if d.kind == "office":
        if weekend or not 8 <= hour < 18:
            return 0.02
        return 1.0
    base = 0.55 + 0.45 * math.sin((hour - 9) / 24 * 2 * math.pi)
    return base * (0.6 if weekend else 1.0)


def _quiet(d: _Dev, t: int) -> bool:
    return _activity(d, t) < 0.05


def _poisson(rng: random.Random, lam: float) -> int:
    if lam < 30:
        # Knuth: exact and fast for small means
        limit = math.exp(-lam)
        k, p = 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


class Fleet:
    """Generates windows for every device, with attacks overlaid and labelled."""

    def __init__(
        self, seed: int, fleet: FleetParams | None = None, scen: ScenarioParams | None = None
    ):
        self.seed = seed
        self.p = fleet or FleetParams()
        self.s = scen or ScenarioParams()
        self.rng = random.Random(seed)  # noqa: S311 (simulation, not crypto)
        # start on a Monday 00:00 UTC, a random week, so weekday logic is exercised
        self.t0 = (1_767_571_200 + self.rng.randrange(0, 52) * 7 * DAY) // 300 * 300
        if self.p.days < self.p.learning_days + 1:
            raise ValueError("the run must last at least one day longer than learning")
        self.n_windows = self.p.days * 288
        self.devices = [self._device(i) for i in range(self.p.devices)]
        self.attacks: list[Attack] = []
        self.renewals: dict[int, list[tuple[str, str]]] = {}
        self.rollouts: dict[int, list[tuple[str, str]]] = {}
        self._plan()

    def _device(self, i: int) -> _Dev:
        r = self.rng
        kind = KINDS[i % 3]
        pool = 64 + (i % 3) * 8 + r.randrange(0, 4)
        agent = r.random() < self.p.agent_fraction
        did = f"dev-{i:05d}"
        joins = 0
        if r.random() < self.p.join_fraction and self.n_windows - 288 > self.p.learning_days * 288:
            joins = r.randrange(self.p.learning_days * 288, self.n_windows - 288)
        return _Dev(
            id=did,
            kind=kind,
            group=f"{kind}s",
            rate=math.exp(r.gauss(math.log(20 if kind != "office" else 40), 0.6)),
            payload=r.uniform(80, 900),
            noise=r.uniform(*self.p.noise),
            tz=r.randrange(-2, 4),
            rx=r.uniform(0.05, 2.0),
            agent=agent,
            pool=pool,
            ip=f"10.{pool}.{r.randrange(256)}.{r.randrange(1, 255)}",
            topics=tuple(
                f"devices/{did}/{t}"
                for t in r.sample(["telemetry", "status", "events", "config/ack", "logs"], 3)
            ),
            dests=tuple(
                f"10.0.{r.randrange(0, 4)}.{r.randrange(1, 20)}" for _ in range(r.randint(1, 3))
            ),
            ports=tuple(r.sample(["tcp/22", "udp/5683", "tcp/8080", "udp/123"], r.randint(0, 2))),
            cert=f"sha256:{r.getrandbits(128):032x}",
            fw="1.4.2",
            joins_at=joins,
        )

    def _plan(self) -> None:
        r = self.rng
        p, s = self.p, self.s
        start_min = p.learning_days * 288 + 12
        busy: dict[str, list[tuple[int, int]]] = {}
        eligible = [d for d in self.devices if d.joins_at == 0]

        def place(scenario: str, pick: Callable[[_Dev], bool], length: tuple[int, int]) -> None:
            for _ in range(200):
                d = r.choice(eligible)
                if not pick(d):
                    continue
                n = r.randint(*length)
                if self.n_windows - n - p.grace <= start_min:
                    continue  # the run is too short for this instance
                st = r.randrange(start_min, self.n_windows - n - p.grace)
                if scenario == "off_hours":
                    # start inside the device's quiet hours and stay in them
                    for _ in range(400):
                        if all(_quiet(d, self.t0 + (st + k) * 300) for k in range(n)):
                            break
                        st = r.randrange(start_min, self.n_windows - n - p.grace)
                    else:
                        continue
                span = (st - p.grace, st + n + p.grace)
                if any(a < span[1] and span[0] < b for a, b in busy.get(d.id, [])):
                    continue
                busy.setdefault(d.id, []).append(span)
                self.attacks.append(Attack(scenario, d.id, st, st + n - 1, self._draw(scenario)))
                return

        for _ in range(p.instances):
            place("credential_stuffing", lambda d: True, s.stuffing_windows)
            place("cloned_cert", lambda d: True, s.clone_windows)
            place("exfil_burst", lambda d: True, s.burst_windows)
            place("slow_drip", lambda d: d.agent, s.drip_windows)
            place("topic_scan", lambda d: True, s.scan_windows)
            place("off_hours", lambda d: d.kind != "meter", s.offhours_windows)
            place("backdoor_port", lambda d: d.agent, s.backdoor_windows)
            place("cert_or_firmware_swap", lambda d: True, s.swap_windows)
        # legitimate changes, announced by the registry (never alerts)
        for d in self.devices:
            if r.random() < p.renewals:
                w = r.randrange(start_min, self.n_windows)
                self.renewals.setdefault(w, []).append((d.id, f"sha256:{r.getrandbits(128):032x}"))
        groups = sorted({d.group for d in self.devices})
        for g in r.sample(groups, min(p.rollout_groups, len(groups))):
            w0 = r.randrange(start_min, max(start_min + 1, self.n_windows - 288))
            for d in self.devices:
                if d.group == g:
                    self.rollouts.setdefault(w0 + r.randrange(0, 288), []).append((d.id, "1.5.0"))

    def _draw(self, scenario: str) -> dict[str, Any]:
        r, s = self.rng, self.s
        if scenario == "credential_stuffing":
            return {"failures": r.randint(*s.stuffing_failures), "src": _public_ip(r)}
        if scenario == "cloned_cert":
            return {"src": _public_ip(r), "factor": r.uniform(*s.clone_msgs_factor)}
        if scenario == "exfil_burst":
            return {
                "factor": r.uniform(*s.burst_factor),
                "new_dest": r.random() < 0.5,
                "dest": _public_ip(r),
            }
        if scenario == "slow_drip":
            return {
                "factor": r.uniform(*s.drip_factor),
                "new_dest": r.random() < s.drip_new_destination,
                "dest": _public_ip(r),
                "via_mqtt": r.random() < 0.5,
            }
        if scenario == "topic_scan":
            return {"topics": r.randint(*s.scan_topics), "denied": r.uniform(*s.scan_denied)}
        if scenario == "off_hours":
            return {"factor": r.uniform(*s.offhours_factor)}
        if scenario == "backdoor_port":
            return {"port": f"{r.choice(['tcp', 'udp'])}/{r.randrange(1024, 65536)}"}
        return {
            "what": r.choice(["certificate", "firmware"]),
            "value": f"sha256:{r.getrandbits(128):032x}",
        }

    def windows(self) -> Any:
        """Yield (window index, [(MetricWindow, groups, attack or None)]) in time order;
        also applies announced renewals and rollouts to the devices (see ``announce``)."""
        r = self.rng
        p = self.p
        by_dev: dict[str, list[Attack]] = {}
        for a in self.attacks:
            by_dev.setdefault(a.device_id, []).append(a)
        for w in range(self.n_windows):
            t = self.t0 + w * 300
            announced: list[tuple[str, str, str]] = []
            for did, cert in self.renewals.get(w, []):
                announced.append((did, "certificate", cert))
            for did, fw in self.rollouts.get(w, []):
                announced.append((did, "firmware", fw))
            batch: list[tuple[MetricWindow, tuple[str, ...], Attack | None]] = []
            for d in self.devices:
                if w < d.joins_at:
                    continue
                for did, what, val in announced:
                    if did == d.id:
                        if what == "certificate":
                            d.cert = val
                        else:
                            d.fw = val
                act = _activity(d, t)
                noise = math.exp(r.gauss(0.0, d.noise))
                if r.random() < p.spike_prob:
                    noise *= r.uniform(1.5, 3.0)
                lam = d.rate * act * noise
                msgs = _poisson(r, lam)
                if r.random() < p.ip_churn_prob:
                    d.ip = f"10.{d.pool}.{r.randrange(256)}.{r.randrange(1, 255)}"
                recon = r.random() < p.reconnect_prob
                mw = MetricWindow(
                    device_id=d.id,
                    start=t,
                    messages_sent=msgs,
                    messages_received=_poisson(r, d.rx * max(act, 0.1)),
                    bytes_sent=int(msgs * d.payload * r.uniform(0.9, 1.1)),
                    bytes_received=0,
                    connection_attempts=1 if recon else 0,
                    disconnects=1 if recon else 0,
                    disconnect_seconds=r.randrange(2, 120) if recon else 0,
                    auth_failures=1 if r.random() < p.glitch_prob else 0,
                    authz_failures=1 if r.random() < p.glitch_prob else 0,
                    source_ips=(d.ip,),
                    source_ips_total=1,
                    topics=d.topics[: 1 + (msgs > 0) * 2],
                    topics_total=min(3, 1 + (msgs > 0) * 2),
                    cert_fingerprint=d.cert,
                    firmware_version=d.fw,
                )
                mw.bytes_received = mw.messages_received * 60  # type: ignore[operator]
                if d.agent:
                    mw.bytes_out = int((mw.bytes_sent or 0) * 1.15 + 400 * noise)
                    mw.bytes_in = int((mw.bytes_received or 0) * 1.15 + 300)
                    mw.packets_out = msgs * 2 + 4
                    mw.packets_in = msgs + 4
                    mw.established = len(d.dests)
                    mw.destinations = d.dests
                    mw.destinations_total = len(d.dests)
                    mw.listening_ports = d.ports
                    mw.listening_ports_total = len(d.ports)
                attack = None
                for a in by_dev.get(d.id, ()):
                    if a.start <= w <= a.end:
                        attack = a
                        _inject(a, mw, d, act, r)
                        break
                batch.append((mw, (d.group,), attack))
            yield w, batch, announced


def _public_ip(r: random.Random) -> str:
    first = r.choice([31, 45, 91, 185, 203])
    return f"{first}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"


def _inject(a: Attack, mw: MetricWindow, d: _Dev, act: float, r: random.Random) -> None:
    pr = a.params
    sc = a.scenario
    if sc == "credential_stuffing":
        f = max(1, int(pr["failures"] * r.uniform(0.7, 1.3)))
        mw.auth_failures = (mw.auth_failures or 0) + f
        mw.connection_attempts = (mw.connection_attempts or 0) + f
        mw.source_ips = (*mw.source_ips, pr["src"])
        mw.source_ips_total += 1
    elif sc == "cloned_cert":
        extra = _poisson(r, d.rate * pr["factor"])
        mw.messages_sent = (mw.messages_sent or 0) + extra
        mw.bytes_sent = (mw.bytes_sent or 0) + int(extra * d.payload)
        mw.source_ips = (*mw.source_ips, pr["src"])
        mw.source_ips_total += 1
        kicks = r.randint(0, 3)
        mw.connection_attempts = (mw.connection_attempts or 0) + kicks
        mw.disconnects = (mw.disconnects or 0) + kicks
    elif sc in ("exfil_burst", "slow_drip"):
        level = max(d.rate * act, 1.0) * d.payload * 1.15 + 400
        extra = int(level * pr["factor"] * r.uniform(0.8, 1.2))
        if sc == "exfil_burst" or pr.get("via_mqtt"):
            mw.bytes_sent = (mw.bytes_sent or 0) + extra
        if mw.bytes_out is not None:
            mw.bytes_out += extra
        if pr["new_dest"] and mw.bytes_out is not None:
            mw.destinations = (*mw.destinations, pr["dest"])
            mw.destinations_total += 1
    elif sc == "topic_scan":
        n = max(1, int(pr["topics"] * r.uniform(0.7, 1.3)))
        prefix = r.choice(["devices/", "groups/", "$SYS/", "cmd/"])
        topics = tuple(f"{prefix}{r.getrandbits(32):08x}/#" for _ in range(n))
        mw.topics = (*mw.topics, *topics)[:64]
        mw.topics_total += n
        mw.authz_failures = (mw.authz_failures or 0) + int(n * pr["denied"])
    elif sc == "off_hours":
        extra = _poisson(r, d.rate * pr["factor"])
        mw.messages_sent = (mw.messages_sent or 0) + extra
        mw.bytes_sent = (mw.bytes_sent or 0) + int(extra * d.payload)
        if mw.bytes_out is not None:
            mw.bytes_out += int(extra * d.payload * 1.15)
    elif sc == "backdoor_port":
        mw.listening_ports = (*mw.listening_ports, pr["port"])
        mw.listening_ports_total += 1
    elif sc == "cert_or_firmware_swap":
        if pr["what"] == "certificate":
            mw.cert_fingerprint = pr["value"]
        else:
            mw.firmware_version = "9.9.9-" + pr["value"][-6:]


@dataclass
class ScenarioResult:
    scenario: str
    instances: int
    detected: int
    true_alerts: int
    false_alerts_on_devices: int
    latencies: list[int]

    @property
    def recall(self) -> float:
        return self.detected / self.instances if self.instances else float("nan")

    @property
    def precision(self) -> float:
        t = self.true_alerts + self.false_alerts_on_devices
        return self.true_alerts / t if t else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _pct(vals: list[int], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return float(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])


@dataclass
class Evaluation:
    seeds: list[int]
    scenarios: dict[str, ScenarioResult]
    false_alerts: int
    device_days: float
    windows: int
    seconds: float
    false_by_key: dict[str, int]
    fleet: dict[str, Any]
    #: (alerts the HalfSpaceTrees second opinion agreed with, alerts it scored)
    second_true: tuple[int, int] = (0, 0)
    second_false: tuple[int, int] = (0, 0)

    @property
    def false_per_1000_device_days(self) -> float:
        return 1000 * self.false_alerts / self.device_days if self.device_days else float("nan")

    def meets_targets(self) -> bool:
        return (
            all(r.recall >= 0.95 for r in self.scenarios.values())
            and self.false_per_1000_device_days <= 1.0
            and all(_pct(r.latencies, 0.95) <= 2 for r in self.scenarios.values())
        )

    def table(self) -> str:
        lines = [
            "| scenario | instances | recall | precision | F1 | latency p50 "
            "| latency p95 (windows) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in SCENARIOS:
            r = self.scenarios.get(name)
            if r is None:
                continue
            lines.append(
                f"| {name} | {r.instances} | {r.recall:.3f} | {r.precision:.3f} | {r.f1:.3f} "
                f"| {_pct(r.latencies, 0.5):g} | {_pct(r.latencies, 0.95):g} |"
            )
        lines.append("")
        lines.append(
            f"False alerts: {self.false_alerts} over {self.device_days:,.0f} device-days after "
            f"learning = **{self.false_per_1000_device_days:.2f} per 1,000 device-days**"
            + (f" (by detector: {self.false_by_key})" if self.false_by_key else "")
        )
        if self.second_true[1] or self.second_false[1]:
            lines.append(
                f"Second opinion (HalfSpaceTrees) agreed with {self.second_true[0]} of "
                f"{self.second_true[1]} true alerts and {self.second_false[0]} of "
                f"{self.second_false[1]} false alerts."
            )
        lines.append(
            f"Seeds {self.seeds}; {self.windows:,} windows in {self.seconds:.1f} s; "
            f"targets met: {'yes' if self.meets_targets() else 'NO'}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "fleet": self.fleet,
            "false_alerts": self.false_alerts,
            "device_days": self.device_days,
            "false_per_1000_device_days": self.false_per_1000_device_days,
            "false_by_key": self.false_by_key,
            "second_opinion": {"true": list(self.second_true), "false": list(self.second_false)},
            "windows": self.windows,
            "seconds": self.seconds,
            "targets_met": self.meets_targets(),
            "scenarios": {
                k: {
                    "instances": r.instances,
                    "detected": r.detected,
                    "recall": r.recall,
                    "precision": r.precision,
                    "f1": r.f1,
                    "latency_p50": _pct(r.latencies, 0.5),
                    "latency_p95": _pct(r.latencies, 0.95),
                }
                for k, r in self.scenarios.items()
            },
        }


def default_rules() -> list[Rule]:
    """The rules the evaluation runs with (also shipped as docs example)."""
    return [
        Rule(
            name="auth-failures",
            metric="auth_failures",
            comparison="less-than",
            value=5,
            severity="high",
        ),
        Rule(
            name="authz-failures",
            metric="authz_failures",
            comparison="less-than",
            value=10,
            severity="medium",
        ),
        Rule(
            name="many-sources",
            metric="source_ip_count",
            comparison="less-than-equals",
            value=2,
            consecutive_to_alarm=2,
            severity="medium",
        ),
    ]


def evaluate(
    seeds: list[int],
    fleet: FleetParams | None = None,
    scen: ScenarioParams | None = None,
    *,
    rules: list[Rule] | None = None,
    baseline: BaselineConfig | None = None,
    multivariate: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    fp = fleet or FleetParams()
    results = {s: ScenarioResult(s, 0, 0, 0, 0, []) for s in SCENARIOS}
    false_alerts = 0
    false_by_key: dict[str, int] = {}
    benign_windows = 0
    total = 0
    st = [0, 0]  # second opinion on true alerts: agreed, scored
    sf = [0, 0]
    t0 = time.perf_counter()
    for si, seed in enumerate(seeds):
        bl = baseline or BaselineConfig(learning_windows=fp.learning_days * 288)
        det = Detector(
            default_rules() if rules is None else rules,
            baselines={"*": bl},
            multivariate=multivariate,
            seed=seed,
        )
        f = Fleet(seed, fp, scen)
        learn_end = fp.learning_days * 288
        first: dict[int, int] = {}  # attack index -> first alert window
        att_index = {id(a): i for i, a in enumerate(f.attacks)}
        windows_of: dict[str, list[tuple[int, int, int]]] = {}
        for i, a in enumerate(f.attacks):
            windows_of.setdefault(a.device_id, []).append((a.start, a.end + fp.grace, i))
        true_alerts: dict[int, int] = {}
        false_on: dict[str, int] = {}
        for w, batch, announced in f.windows():
            for did, what, val in announced:
                if what == "certificate":
                    det.expect(did, certificate=val)
                else:
                    det.expect(did, firmware=val)
            for mw, groups, _attack in batch:
                total += 1
                sigs = det.process(mw, groups)
                in_eval = w >= learn_end
                hit: int | None = None
                if in_eval:
                    for a0, a1, ai in windows_of.get(mw.device_id, ()):
                        if a0 <= w <= a1:
                            hit = ai
                            break
                    if hit is None:
                        benign_windows += 1
                for sig in sigs:
                    if sig.kind != "alarm" or sig.evidence.get("repeat") or not in_eval:
                        continue
                    if "multivariate_score" in sig.evidence:
                        tally = st if hit is not None else sf
                        tally[1] += 1
                        tally[0] += bool(sig.evidence.get("multivariate_agrees"))
                    if hit is not None:
                        true_alerts[hit] = true_alerts.get(hit, 0) + 1
                        first.setdefault(hit, w)
                    else:
                        false_alerts += 1
                        k = sig.key.split(":")[0] + ":" + sig.key.split(":")[1]
                        false_by_key[k] = false_by_key.get(k, 0) + 1
                        false_on[mw.device_id] = false_on.get(mw.device_id, 0) + 1
            if progress is not None:
                progress(si * f.n_windows + w + 1, len(seeds) * f.n_windows)
        del att_index
        for i, a in enumerate(f.attacks):
            r = results[a.scenario]
            r.instances += 1
            r.true_alerts += true_alerts.get(i, 0)
            if i in first and first[i] >= a.start:
                r.detected += 1
                r.latencies.append(first[i] - a.start + 1)
        for a in f.attacks:
            results[a.scenario].false_alerts_on_devices += false_on.pop(a.device_id, 0)
    return Evaluation(
        seeds=list(seeds),
        scenarios=results,
        false_alerts=false_alerts,
        device_days=benign_windows / 288,
        windows=total,
        seconds=time.perf_counter() - t0,
        false_by_key=false_by_key,
        second_true=(st[0], st[1]),
        second_false=(sf[0], sf[1]),
        fleet={"fleet": asdict(fp), "scenarios": asdict(scen or ScenarioParams())},
    )
