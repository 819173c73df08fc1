"""Metric window model: validation refusals, caps, wire round trip, intake limits."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwarden.detect.errors import MetricRejectedError
from fleetwarden.detect.metrics import MAX_LIST, Intake, MetricWindow, parse_window

NOW = 1_800_000_000


def dp(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"device_id": "d1", "start": NOW - 300, "messages_sent": 5}
    base.update(kw)
    return base


def test_parse_valid_and_round_trip() -> None:
    obj = dp(
        bytes_sent=1200,
        source_ips=["10.1.2.3", "10.1.2.3", "2001:db8::1"],
        topics=["devices/d1/telemetry"],
        listening_ports=["tcp/22"],
        destinations=["10.0.0.5"],
        cert_fingerprint="sha256:ab",
        firmware_version="1.2.3",
        custom={"battery_mv": 3300},
    )
    mw = parse_window(obj, now=NOW, custom_metrics=["battery_mv"])
    assert mw.start % 300 == 0
    assert mw.source_ips == ("10.1.2.3", "2001:db8::1")  # de-duplicated
    assert mw.value("custom:battery_mv") == 3300
    assert mw.value("source_ip_count") == 2
    assert mw.value("bytes_out") is None  # not reported is not zero
    again = parse_window(mw.to_dict(), now=NOW, custom_metrics=["battery_mv"])
    assert again == mw


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "bad_type"),
        ({"start": NOW}, "missing"),
        (dp(device_id=""), "missing"),
        (dp(device_id="x" * 200), "missing"),
        (dp(start="yesterday"), "missing"),
        (dp(start=NOW + 3600), "future"),
        (dp(start=NOW - 10 * 86400), "stale"),
        (dp(messages_sent=-1), "negative"),
        (dp(messages_sent=10**15), "absurd"),
        (dp(messages_sent=float("nan")), "bad_value"),
        (dp(messages_sent=1.5), "bad_value"),
        (dp(messages_sent=True), "bad_type"),
        (dp(messages_sent="5"), "bad_type"),
        (dp(source_ips="10.0.0.1"), "bad_type"),
        (dp(source_ips=["not-an-ip"]), "bad_value"),
        (dp(listening_ports=["tcp/70000"]), "bad_value"),
        (dp(listening_ports=["sctp/22"]), "bad_value"),
        (dp(custom={"nope": 1}), "unknown_custom"),
        (dp(window_s=60), "bad_value"),
        ({"device_id": "d1", "start": NOW - 300}, "missing"),
    ],
)
def test_refusals(obj: Any, reason: str) -> None:
    with pytest.raises(MetricRejectedError) as exc:
        parse_window(obj, now=NOW)
    assert exc.value.reason == reason


def test_lists_are_capped_but_total_kept() -> None:
    topics = [f"t/{i}" for i in range(1000)]
    mw = parse_window(dp(topics=topics), now=NOW)
    assert len(mw.topics) == MAX_LIST["topics"]
    assert mw.topics_total == 1000


def test_intake_unknown_flood_order_and_bounded_memory() -> None:
    known = {"d1", "d2"}
    intake = Intake(known.__contains__, clock=lambda: NOW, keep_rejections=10)
    assert intake.offer(dp()) is not None
    assert intake.offer(dp()) is not None  # one retry of the same window is fine
    assert intake.offer(dp()) is None  # a third is a flood
    assert intake.offer(dp(device_id="ghost")) is None
    assert intake.offer(dp(start=NOW - 900)) is None  # older than one already seen
    assert intake.rejected == {"flood": 1, "unknown_device": 1, "out_of_order": 1}
    for _ in range(5000):
        intake.offer(dp(device_id="ghost"))
        intake.offer(dp())
    assert len(intake.recent) == 10  # ring, not a growing list
    assert len(intake._seen) == 1  # state only for known devices that sent data
    assert intake.recent[-1].reason in {"flood", "unknown_device"}


def test_window_value_helpers() -> None:
    mw = MetricWindow(device_id="d", start=0, topics=("a",), topics_total=7)
    assert mw.value("topic_count") == 7
    assert mw.value("custom:x") is None
