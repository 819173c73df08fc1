"""The managed broker against real peers: mosquitto_pub/mosquitto_sub and paho-mqtt.

Marked interop: Debian mosquitto + mosquitto-clients (.ci/apt/gateway.txt).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time

import pytest
from gw_harness import Device, Harness, needs_broker

from fleetwarden.events import EventClass, Status
from fleetwarden.events.model import device_config_change
from fleetwarden.gateway.testpki import ScratchPKI

pytestmark = [pytest.mark.interop, needs_broker]


def _auth_fail(h: Harness, **match: str):
    def pred(e) -> bool:
        if e.class_uid != EventClass.AUTHENTICATION or e.status_id != Status.FAILURE:
            return False
        gw = e.data.get("unmapped", {}).get("gateway", {})
        return all((getattr(e, k, None) == v) or gw.get(k) == v for k, v in match.items())

    return h.wait_for(pred)


def test_valid_device_connects_and_segmented_topics(harness: Harness, tmp_path) -> None:
    h = harness
    d1 = h.add_device("dev1")
    d2 = h.add_device("dev2")
    d3 = h.add_device("dev3")
    h.add_group("line-a", ["dev1", "dev3"])
    h.add_group("line-b", ["dev2"])
    h.reload()
    # mosquitto_sub (a real third-party client) in its own namespace receives its data.
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(h.port),
            "--cafile",
            str(h.pki.chain_path),
            "--cert",
            str(d1.cert_path),
            "--key",
            str(d1.key_path),
            "-i",
            "dev1",
            "-t",
            "devices/dev1/#",
            "-t",
            "groups/line-a/#",
            "-C",
            "1",
            "-W",
            "15",
            "-v",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    h.wait_for(
        lambda e: (
            e.class_uid == EventClass.AUTHENTICATION
            and e.device_uid == "dev1"
            and e.status_id == Status.SUCCESS
        )
    )
    p = h.pub(d2, "devices/dev2/telemetry", message="x")
    assert p.returncode == 0, p.stderr
    # dev2 cannot reach dev1's namespace: publish is denied (MQTT 5 PUBACK 135).
    dev2 = Device(h, d2)
    assert dev2.connected.wait(10)
    info = dev2.client.publish("devices/dev1/cmd", b"evil", qos=1)
    info.wait_for_publish(5)
    time.sleep(0.3)
    assert dev2.puback and dev2.puback[-1].value == 135
    # ... and its subscriptions outside its namespace/groups are refused in the SUBACK.
    dev2.client.subscribe(
        [
            ("devices/dev1/#", 1),
            ("#", 1),
            ("devices/+/telemetry", 1),
            ("groups/line-a/#", 1),
            ("groups/line-b/#", 1),
            ("devices/dev2/#", 1),
        ]
    )
    time.sleep(0.5)
    codes = [rc.value for rc in dev2.suback]
    assert codes == [135, 135, 135, 135, 1, 1]
    # A group peer's message reaches mosquitto_sub; dev2's attempts (another group,
    # another device's namespace) never did.
    assert h.pub(d2, "groups/line-a/news", message="intruder").returncode == 0
    p = h.pub(d3, "groups/line-a/news", message="peer")
    assert p.returncode == 0, p.stderr
    out, _ = sub.communicate(timeout=20)
    assert out.strip() == "groups/line-a/news peer"
    dev2.close()


def test_bad_certificates_refused(harness: Harness, other_pki: ScratchPKI) -> None:
    h = harness
    h.add_device("dev1")
    h.reload()
    expired = h.pki.device("dev1", expired=True)
    foreign = other_pki.device("dev1")
    assert h.pub(None, "devices/dev1/t", client_id="dev1").returncode != 0
    assert h.pub(expired, "devices/dev1/t").returncode != 0
    assert h.pub(foreign, "devices/dev1/t").returncode != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msgs = [e.message for e in h.events if e.status_id == Status.FAILURE]
        if sum("certificate verify failed" in m for m in msgs) >= 2:
            break
        time.sleep(0.1)
    assert any("did not return a certificate" in m for m in msgs), msgs
    assert sum("certificate verify failed" in m for m in msgs) >= 2, msgs
    e = _auth_fail(h, src_ip="127.0.0.1", kind="tls_failure")
    assert e.device_uid is None  # a failed handshake is attributed to its source address


@pytest.mark.gateway_settings(crl_file="crl.der")
def test_revoked_in_crl_refused(harness: Harness) -> None:
    h = harness
    cert = h.add_device("dev1")
    h.pki.revoke(cert)
    h.pki.write_crl(h.settings.data_dir / "crl.der")
    h.reload()
    r = h.pub(cert, "devices/dev1/t")
    assert r.returncode != 0
    e = _auth_fail(h, reason="revoked")
    assert e.device_uid == "dev1" and e.src_ip == "127.0.0.1"
    fresh = h.pki.device("dev1")  # a new, unrevoked certificate for the same device works
    assert h.pub(fresh, "devices/dev1/t").returncode == 0


def test_live_revocation_drops_only_that_device(harness: Harness) -> None:
    h = harness
    c1, c2 = h.add_device("dev1"), h.add_device("dev2")
    h.reload()
    d1, d2 = Device(h, c1), Device(h, c2)
    assert d1.connected.wait(10) and d2.connected.wait(10)
    t0 = time.monotonic()
    # The identity control's revocation event, as documented in docs/gateway.md.
    ev = device_config_change(
        device_uid="dev1",
        message="certificate revoked",
        changes={"certificate": {"status": "revoked", "serial": c1.serial_hex}},
    )
    h.run(h.bus.publish(ev))
    assert d1.disconnected.wait(5)
    assert time.monotonic() - t0 < 5
    time.sleep(0.5)
    assert d2.client.is_connected() and not d2.disconnected.is_set(), [e.message for e in h.events]
    r = h.pub(c1, "devices/dev1/t")
    assert r.returncode != 0
    _auth_fail(h, reason="revoked")
    h.wait_for(lambda e: "session dropped" in e.message and e.device_uid == "dev1")
    d1.close()
    d2.close()


def test_source_network_binding(harness: Harness) -> None:
    h = harness
    c = h.add_device("dev1", allowed_cidrs=["127.0.0.5/32"])
    g = h.add_device("dev2")
    h.add_group("apn-pool", ["dev2"], allowed_cidrs=["127.0.0.64/26"])
    h.reload()
    assert h.pub(c, "devices/dev1/t", bind="127.0.0.2").returncode != 0
    e = _auth_fail(h, reason="source_network")
    assert e.device_uid == "dev1" and e.src_ip == "127.0.0.2"
    assert "127.0.0.5/32" in e.message and "dev1" in e.message and "127.0.0.2" in e.message
    assert h.pub(c, "devices/dev1/t", bind="127.0.0.5").returncode == 0
    assert h.pub(g, "devices/dev2/t", bind="127.0.0.3").returncode != 0
    e = _auth_fail(h, reason="source_network", device_uid="dev2")
    assert "group:apn-pool" in e.message
    assert h.pub(g, "devices/dev2/t", bind="127.0.0.70").returncode == 0


@pytest.mark.gateway_settings(source_policy="quarantine")
def test_source_network_quarantine(harness: Harness) -> None:
    h = harness
    c = h.add_device("dev1", allowed_cidrs=["127.0.0.5/32"])
    h.reload()
    d = Device(h, c, bind="127.0.0.2")
    assert d.connected.wait(10)
    d.client.subscribe([("devices/dev1/#", 1), ("quarantine/dev1/#", 1)])
    time.sleep(0.5)
    assert [rc.value for rc in d.suback] == [135, 1]
    h.wait_for(lambda e: e.class_uid == EventClass.DETECTION_FINDING and "quarantined" in e.message)
    d.close()


def test_client_id_must_match_certificate(harness: Harness) -> None:
    h = harness
    c = h.add_device("dev1")
    h.reload()
    assert h.pub(c, "devices/dev1/t", client_id="dev2").returncode != 0
    e = _auth_fail(h, reason="client_id_mismatch")
    assert e.device_uid == "dev1"


def test_unknown_device_refused(harness: Harness) -> None:
    h = harness
    stranger = h.pki.device("not-registered")
    assert h.pub(stranger, "devices/not-registered/t").returncode != 0
    _auth_fail(h, reason="unknown_device")


def test_shared_credential_detected(harness: Harness) -> None:
    h = harness
    c = h.add_device("dev1")
    h.reload()
    first = Device(h, c, bind="127.0.0.2")
    assert first.connected.wait(10)
    second = Device(h, c, bind="127.0.0.3")
    assert second.connected.wait(10)
    e = h.wait_for(lambda e: e.class_uid == EventClass.DETECTION_FINDING and "M1" in e.message)
    assert e.device_uid == "dev1" and "127.0.0.2" in e.message and "127.0.0.3" in e.message
    first.close()
    second.close()


@pytest.mark.gateway_settings(max_packet_size=4096)
def test_oversized_and_malformed_input(harness: Harness) -> None:
    h = harness
    c1, c2 = h.add_device("dev1"), h.add_device("dev2")
    h.reload()
    bystander = Device(h, c2)
    assert bystander.connected.wait(10)
    big = Device(h, c1)
    assert big.connected.wait(10)
    big.client.publish("devices/dev1/blob", b"x" * 10_000, qos=1)
    assert big.disconnected.wait(10)  # broker drops the oversize packet's sender
    big.close()
    h.wait_for(lambda e: e.device_uid == "dev1" and "disconnected" in e.message)
    # Malformed MQTT over a valid TLS session, then raw garbage on the TLS port.
    ctx = ssl.create_default_context(cafile=str(h.pki.chain_path))
    ctx.load_cert_chain(str(c1.cert_path), str(c1.key_path))
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"\x10\xff\xff\xff\xff\x7f garbage")
            with contextlib.suppress(ConnectionResetError):
                assert tls.recv(10) == b""  # the broker closes the malformed session
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            raw.recv(100)
    e = _auth_fail(h, kind="tls_failure")
    assert "http request" in e.message
    time.sleep(0.3)
    assert bystander.client.is_connected()
    assert h.pub(c1, "devices/dev1/t").returncode == 0
    bystander.close()


@pytest.mark.gateway_settings(max_connects_per_addr=20)
def test_connection_flood(harness: Harness) -> None:
    h = harness
    c1, c2 = h.add_device("dev1"), h.add_device("dev2")
    h.reload()
    socks = []
    for _ in range(300):  # half-open TCP flood
        s = socket.socket()
        s.settimeout(5)
        s.connect(("127.0.0.1", h.port))
        socks.append(s)
    procs = [
        subprocess.Popen(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(h.port),
                "--cafile",
                str(h.pki.chain_path),
                "--cert",
                str(c1.cert_path),
                "--key",
                str(c1.key_path),
                "-i",
                "dev1",
                "-A",
                "127.0.0.7",
                "-t",
                "devices/dev1/t",
                "-m",
                "x",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(40)
    ]
    rcs = [p.wait(30) for p in procs]
    # a 10 s window may roll over during the burst: at most two windows admitted
    assert 1 <= rcs.count(0) <= 40 and any(rc != 0 for rc in rcs)
    e = _auth_fail(h, reason="rate_limited")
    assert e.src_ip == "127.0.0.7"
    for s in socks:
        s.close()
    # Everyone else is undisturbed.
    assert h.pub(c2, "devices/dev2/t", bind="127.0.0.9").returncode == 0
    assert h.gateway.supervisor is not None and h.gateway.supervisor.restarts == 0


def test_metrics_per_device(harness: Harness) -> None:
    h = harness
    c1, c2 = h.add_device("dev1"), h.add_device("dev2")
    h.add_group("cell", ["dev1", "dev2"])
    h.reload()
    d2 = Device(h, c2)
    assert d2.connected.wait(10)
    d2.client.subscribe("groups/cell/#", qos=0)
    d1 = Device(h, c1, bind="127.0.0.4")
    assert d1.connected.wait(10)
    for i in range(25):
        d1.client.publish("devices/dev1/telemetry", b"0123456789", qos=0)
    d1.client.publish("devices/dev2/x", b"no", qos=0)  # authorization failure
    d1.client.publish("groups/cell/news", b"abc", qos=0)
    time.sleep(1.0)
    d1.close()
    time.sleep(1.0)
    h.run(h.gateway.flush_metrics_now())
    rec = h.wait_for(
        lambda e: e.class_uid == EventClass.NETWORK_ACTIVITY and e.device_uid == "dev1"
    ).data["unmapped"]["fleetwarden_metrics"]
    assert rec["messages_sent"] == 26 and rec["bytes_sent"] == 253
    assert rec["authorization_failures"] == 1 and rec["connections"] == 1
    assert rec["disconnects"] == 1 and rec["source_addresses"] == ["127.0.0.4"]
    assert "devices/dev1/telemetry" in rec["topics"] and "devices/dev2/x" in rec["topics"]
    rec2 = next(
        e for e in h.events if e.class_uid == EventClass.NETWORK_ACTIVITY and e.device_uid == "dev2"
    ).data["unmapped"]["fleetwarden_metrics"]
    assert rec2["messages_received"] == 1 and rec2["bytes_received"] == 3
    d2.close()


def test_broker_restarted_after_crash(harness: Harness) -> None:
    h = harness
    c = h.add_device("dev1")
    h.reload()
    sup = h.gateway.supervisor
    assert sup is not None
    old = sup.pid
    h.run(sup.kill())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (sup.pid in (None, old) or sup.restarts == 0):
        time.sleep(0.1)
    assert sup.restarts == 1 and sup.pid not in (None, old)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if h.pub(c, "devices/dev1/t").returncode == 0:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("broker did not come back")


def test_control_channel_and_platform_listener_are_closed_to_others(harness: Harness) -> None:
    h = harness
    c1, c2 = h.add_device("dev1"), h.add_device("dev2")
    h.reload()
    victim = Device(h, c1)
    assert victim.connected.wait(10)
    # A device cannot drive the plugin's control channel (it would revoke others).
    attacker = Device(h, c2)
    assert attacker.connected.wait(10)
    attacker.client.publish("$CONTROL/fleetwarden/v1", b"revoke\tdev1\t", qos=1).wait_for_publish(5)
    attacker.client.publish("$CONTROL/fleetwarden/v1", b"kick\tdev1", qos=0)
    time.sleep(1.0)
    assert victim.client.is_connected() and not victim.disconnected.is_set()
    # The loopback platform listener wants the platform password; anonymous is refused.
    base = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(h.gateway.platform_port),
        "-t",
        "devices/dev1/x",
        "-m",
        "x",
    ]
    assert (
        subprocess.run(
            [*base, "-u", "$platform", "-P", "wrong-password-of-some-length"],
            capture_output=True,
            timeout=10,
        ).returncode
        != 0
    )
    assert subprocess.run(base, capture_output=True, timeout=10).returncode != 0
    _auth_fail(h, reason="no_certificate")
    victim.close()
    attacker.close()


def test_hostile_client_id_is_refused_and_reported_safely(harness: Harness) -> None:
    h = harness
    c = h.add_device("dev1")
    h.reload()
    hostile = 'dev1"},{"kind":"connected","device":"dev2\\é'
    d = Device(h, c, client_id=hostile)
    time.sleep(1.0)
    assert not d.connected.is_set()
    e = _auth_fail(h, reason="client_id_mismatch")
    assert e.device_uid == "dev1"
    assert e.data["unmapped"]["gateway"]["client_id"] == hostile  # escaped, not injected
    assert not any(x.device_uid == "dev2" for x in h.events)
    d.close()


def _two_devices(h: Harness) -> None:
    h.add_device("dev1")
    h.add_device("dev2")


@pytest.mark.with_detect
@pytest.mark.gateway_setup.with_args(_two_devices)
def test_metric_windows_reach_the_detection_control(harness: Harness) -> None:
    h = harness
    c1 = h.pki.device("dev1")
    d1 = Device(h, c1)
    assert d1.connected.wait(10)
    for _ in range(10):
        d1.client.publish("devices/dev1/telemetry", b"12345", qos=0)
    time.sleep(1.0)
    before = h.detect.intake.accepted
    h.run(h.gateway.flush_metrics_now())
    ev = h.wait_for(lambda e: e.class_uid == EventClass.NETWORK_ACTIVITY and e.device_uid == "dev1")
    win = ev.data["unmapped"]["metric_window"]
    assert win["schema"] == "fleetwarden.detect.metric_window/1"
    assert win["device_id"] == "dev1" and win["messages_sent"] == 10 and win["bytes_sent"] == 50
    assert win["start"] % win["window_s"] == 0
    assert h.detect.intake.accepted == before + 1, h.detect.intake.rejected
    d1.close()


def test_policy_changes_apply_to_live_sessions(harness: Harness) -> None:
    from fleetwarden.registry import schemas
    from fleetwarden.registry.models import Device as DeviceRow
    from fleetwarden.registry.service import Actor

    h = harness
    c1, c2, c3 = h.add_device("dev1"), h.add_device("dev2"), h.add_device("dev3")
    h.add_group("quarantine", [])
    h.reload()
    d1, d2, d3 = Device(h, c1), Device(h, c2), Device(h, c3)
    assert d1.connected.wait(10) and d2.connected.wait(10) and d3.connected.wait(10)
    # C9 mitigation -> C8: the detection control puts dev1 into the quarantine group.
    h.registry.set_membership("quarantine", "dev1", True, Actor("cli:test"))
    # C3/C4: dev2's allowed network changes to one it is not connecting from.
    h.registry.update_device(
        "dev2", schemas.DeviceUpdate(allowed_cidrs=["127.0.0.5/32"]), Actor("cli:test")
    )
    h.reload()
    assert d1.disconnected.wait(5) and d2.disconnected.wait(5)
    assert d3.client.is_connected()
    h.wait_for(lambda e: e.device_uid == "dev2" and "policy changed (source_network)" in e.message)
    # dev1 comes back (paho reconnects) confined to quarantine/dev1/...
    assert d1.connected.wait(10)
    d1.suback.clear()
    d1.client.subscribe([("devices/dev1/#", 1), ("quarantine/dev1/#", 1)])
    time.sleep(0.5)
    assert [rc.value for rc in d1.suback] == [135, 1]
    # a registry status that forbids connecting drops the live session too
    with h.registry.session() as s:
        s.get(DeviceRow, "dev3").status = "suspended"
    h.reload()
    assert d3.disconnected.wait(5)
    for d in (d1, d2, d3):
        d.close()


def test_identity_revocation_event_drops_session(harness: Harness) -> None:
    """The identity control's own revocation event (identity.service.revoke's shape)."""
    from fleetwarden.identity.service import REVOKED

    h = harness
    c1, c2 = h.add_device("dev1"), h.add_device("dev2")
    h.reload()
    d1, d2 = Device(h, c1), Device(h, c2)
    assert d1.connected.wait(10) and d2.connected.wait(10)
    ev = device_config_change(
        device_uid="dev1",
        message="certificate(s) of dev1 revoked (keyCompromise)",
        changes={"identity_event": REVOKED, "serials": [c1.serial_hex], "reason": "keyCompromise"},
    )
    h.run(h.bus.publish(ev))
    assert d1.disconnected.wait(5)
    time.sleep(0.3)
    assert d2.client.is_connected()
    assert h.pub(c1, "devices/dev1/t").returncode != 0
    _auth_fail(h, reason="revoked")
    d1.close()
    d2.close()
