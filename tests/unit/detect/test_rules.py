"""Rules at Device Defender parity: thresholds, statistics, sets, durations, streaks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetwarden.detect.errors import RuleError
from fleetwarden.detect.metrics import MetricWindow
from fleetwarden.detect.rules import Rule, RuleEngine, load_rules, parse_rules


def w(i: int, dev: str = "d1", **kw: Any) -> MetricWindow:
    return MetricWindow(device_id=dev, start=1_800_000_000 + i * 300, **kw)


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


def test_static_threshold_with_streaks() -> None:
    r = Rule(
        name="auth",
        metric="auth_failures",
        comparison="less-than",
        value=5,
        consecutive_to_alarm=2,
        consecutive_to_clear=2,
    )
    eng = RuleEngine([r])
    seq = [0, 9, 0, 9, 9, 9, 0, 9, 0, 0, 0]
    out = [kinds(eng.evaluate(w(i, auth_failures=v))) for i, v in enumerate(seq)]
    # alarm on the second consecutive violation (index 4), clear after two normals (9)
    assert out[4] == ["alarm"]
    assert out[9] == ["clear"]
    assert sum(len(x) for x in out) == 2
    assert eng.evaluate(w(20)) == []  # metric not reported: neither raises nor clears


def test_duration_windows_sum() -> None:
    r = Rule(
        name="bytes",
        metric="bytes_out",
        comparison="less-than-equals",
        value=1000,
        duration_windows=3,
    )
    eng = RuleEngine([r])
    assert eng.evaluate(w(0, bytes_out=400)) == []
    assert eng.evaluate(w(1, bytes_out=400)) == []
    ev = eng.evaluate(w(2, bytes_out=400))  # 1200 over three windows
    assert kinds(ev) == ["alarm"] and ev[0].value == 1200


def test_cidr_and_port_sets() -> None:
    eng = RuleEngine(
        [
            Rule(name="apn", metric="source_ips", comparison="in-cidr-set", cidrs=["10.64.0.0/10"]),
            Rule(
                name="ports",
                metric="listening_ports",
                comparison="in-port-set",
                ports=["tcp/22", "123"],
            ),
        ]
    )
    ok = w(
        0, source_ips=("10.70.1.1",), listening_ports=("tcp/22", "udp/123"), listening_ports_total=2
    )
    assert eng.evaluate(ok) == []
    bad = w(
        1,
        source_ips=("10.70.1.1", "185.1.2.3"),
        listening_ports=("tcp/22", "tcp/4444"),
        listening_ports_total=2,
    )
    ev = eng.evaluate(bad)
    assert {e.rule.name for e in ev} == {"apn", "ports"}
    assert {tuple(e.value) for e in ev} == {("185.1.2.3",), ("tcp/4444",)}


def test_peer_group_statistical_threshold() -> None:
    r = Rule(
        name="p99",
        metric="messages_sent",
        comparison="less-than-equals",
        statistic="p99",
        groups=["meters"],
    )
    eng = RuleEngine([r], epoch_windows=10)
    # epoch 0: 50 devices x 10 windows with 10..59 messages; no threshold yet
    for i in range(10):
        for d in range(50):
            assert eng.evaluate(w(i, f"m{d}", messages_sent=10 + d), ("meters",)) == []
    # epoch 1: p99 of epoch 0 (~59) applies
    ev = eng.evaluate(w(10, "m0", messages_sent=500), ("meters",))
    assert kinds(ev) == ["alarm"] and 55 <= ev[0].threshold <= 60
    assert eng.evaluate(w(10, "m1", messages_sent=30), ("meters",)) == []
    # devices outside the rule's groups are not judged
    assert eng.evaluate(w(10, "x", messages_sent=10**6), ("trackers",)) == []


def test_rules_file_toml_and_yaml(tmp_path: Path) -> None:
    t = tmp_path / "rules.toml"
    t.write_text(
        '[[rules]]\nname = "auth"\nmetric = "auth_failures"\ncomparison = "less-than"\n'
        'value = 5\nseverity = "high"\n[rules.mitigation]\naction = "quarantine"\nmode = "auto"\n'
    )
    y = tmp_path / "rules.yaml"
    y.write_text(
        "rules:\n  - name: ports\n    metric: listening_ports\n    comparison: in-port-set\n"
        "    ports: ['tcp/22']\n    groups: [meters]\n"
    )
    (a,) = load_rules(t)
    assert a.mitigation is not None and a.mitigation.mode == "auto"
    (b,) = load_rules(y)
    assert b.groups == ["meters"]


@pytest.mark.parametrize(
    ("item", "msg"),
    [
        ({"name": "x", "metric": "auth_failures", "comparison": "less-than"}, "exactly one"),
        ({"name": "x", "metric": "topics", "comparison": "less-than", "value": 1}, "numeric"),
        (
            {"name": "x", "metric": "source_ips", "comparison": "in-cidr-set", "cidrs": ["nope"]},
            "rule #1",
        ),
        (
            {
                "name": "x",
                "metric": "auth_failures",
                "comparison": "less-than",
                "value": 1,
                "statistic": "p99",
            },
            "exactly one",
        ),
        (
            {"name": "x", "metric": "auth_failures", "comparison": "between", "value": 1},
            "unknown comparison",
        ),
        (
            {"name": "bad name!", "metric": "auth_failures", "comparison": "less-than", "value": 1},
            "name",
        ),
        (
            {
                "name": "x",
                "metric": "auth_failures",
                "comparison": "less-than",
                "value": 1,
                "extra": 1,
            },
            "extra",
        ),
    ],
)
def test_invalid_rules(item: dict[str, Any], msg: str) -> None:
    with pytest.raises(RuleError, match=msg):
        parse_rules([item])


def test_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text("rules = [")
    with pytest.raises(RuleError, match="not valid"):
        load_rules(p)
    p.write_text("x = 1")
    with pytest.raises(RuleError, match="list under 'rules'"):
        load_rules(p)
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")
    dup = [{"name": "a", "metric": "auth_failures", "comparison": "less-than", "value": 1}] * 2
    with pytest.raises(RuleError, match="duplicate"):
        parse_rules(dup)
