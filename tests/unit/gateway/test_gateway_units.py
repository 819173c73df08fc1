"""Gateway logic without a broker: policy compilation (SQLite and PostgreSQL), metric
windows, serial parsing, configuration rendering. The broker-side behaviour is covered
against real peers in tests/integration/gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwarden.errors import ConfigError
from fleetwarden.gateway.brokerconf import BrokerFiles, render_config
from fleetwarden.gateway.build import build_plugin
from fleetwarden.gateway.config import GatewaySettings
from fleetwarden.gateway.metrics import MetricsAggregator, metric_event
from fleetwarden.gateway.policy import compile_policy, crl_serials, render_policy
from fleetwarden.gateway.service import parse_serial
from fleetwarden.gateway.supervisor import check_binary
from fleetwarden.gateway.testpki import ScratchPKI
from fleetwarden.registry import Registry, schemas
from fleetwarden.registry.models import Device
from fleetwarden.registry.service import Actor


def test_policy_from_registry(registry: Registry) -> None:
    a = Actor("cli:test")
    registry.add_device(schemas.DeviceCreate(device_id="d1", allowed_cidrs=["10.0.0.0/8"]), a)
    registry.add_device(schemas.DeviceCreate(device_id="d2", ip="192.0.2.7", ip_fixed=True), a)
    registry.add_device(schemas.DeviceCreate(device_id="d3"), a)
    registry.add_device(schemas.DeviceCreate(device_id="d4"), a)
    registry.create_group(schemas.GroupCreate(name="apn", allowed_cidrs=["100.64.0.0/10"]), a)
    registry.set_membership("apn", "d3", True, a)
    with registry.session() as s:  # status is set by other controls (identity, incidents)
        s.get(Device, "d4").status = "suspended"
    pol = {p.device_id: p for p in compile_policy(registry, ["suspended"])}
    assert pol["d1"].cidrs == ("10.0.0.0/8",) and pol["d1"].rule.startswith("device:d1")
    assert pol["d2"].cidrs == ("192.0.2.7/32",)
    assert pol["d3"].cidrs == ("100.64.0.0/10",) and pol["d3"].groups == ("apn",)
    assert pol["d3"].rule.startswith("group:apn")
    assert pol["d4"].cidrs == () and pol["d4"].refused and not pol["d1"].refused
    text = render_policy(pol.values())
    line = next(ln for ln in text.splitlines() if ln.startswith("D\td3\t"))
    assert line.split("\t")[4:6] == ["apn", "100.64.0.0/10"]


def test_metric_windows_sum_and_carry_over() -> None:
    now = [1000.0]
    agg = MetricsAggregator(300, clock=lambda: now[0])
    assert agg.add(
        {
            "device": "d1",
            "msgs_out": 3,
            "bytes_out": 30,
            "topics": ["devices/d1/t"],
            "addresses": ["10.0.0.1"],
            "connected": True,
        }
    )
    assert agg.add({"device": "d1", "msgs_out": 2, "bytes_out": 20, "msgs_in": 1})
    assert not agg.add({"device": 5})
    assert agg.add({"device": "d2", "msgs_out": -4, "authz_fail": True})  # ignored fields
    agg.add_unattributed_failure("198.51.100.9")
    assert not agg.due()
    now[0] += 300
    assert agg.due()
    recs = {r["device"] or r["source_address"]: r for r in agg.flush()}
    assert recs["d1"]["messages_sent"] == 5 and recs["d1"]["bytes_sent"] == 50
    assert recs["d1"]["messages_received"] == 1 and recs["d1"]["topics"] == ["devices/d1/t"]
    assert recs["d2"]["messages_sent"] == 0 and recs["d2"]["authorization_failures"] == 0
    assert recs["198.51.100.9"]["tls_failures"] == 1
    ev = metric_event(recs["d1"])
    assert ev.to_ocsf()["class_uid"] == 4001 and ev.to_ocsf()["traffic"]["bytes_in"] == 50
    assert [r["device"] for r in agg.flush()] == ["d1"]  # still connected: carried over


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (255, "ff"),
        ("00FF", "ff"),
        ("0x1a:2b", "1a2b"),
        ("zz", None),
        (-1, None),
        (None, None),
        (True, None),
        ("", None),
    ],
)
def test_parse_serial(value: object, expected: str | None) -> None:
    assert parse_serial(value) == expected


def test_crl_serials_der_and_pem(tmp_path: Path) -> None:
    pki = ScratchPKI(tmp_path)
    dev = pki.device("d1")
    pki.revoke(dev)
    want = {format(dev.cert.serial_number, "x")}
    assert crl_serials(pki.write_crl(tmp_path / "c.der")) == want
    assert crl_serials(pki.write_crl(tmp_path / "c.pem", pem=True)) == want
    (tmp_path / "bad.crl").write_bytes(b"nonsense")
    with pytest.raises(ValueError):
        crl_serials(tmp_path / "bad.crl")


def test_config_is_mtls_only(tmp_path: Path) -> None:
    gs = GatewaySettings(port=18883)
    files = BrokerFiles(*(tmp_path / n for n in ("c", "p.so", "pol", "rev", "ca", "crt", "key")))
    conf = render_config(gs, files, platform_port=11884, platform_password="s" * 40)
    assert "require_certificate true" in conf and "tls_version tlsv1.2" in conf
    assert "allow_anonymous false" in conf and "set_tcp_nodelay true" in conf
    assert "listener 11884 127.0.0.1" in conf and "listener 18883 0.0.0.0" in conf
    assert "use_identity_as_username" not in conf  # it would bypass the plugin's checks
    assert all("CBC" not in c and "RSA-AES" not in c.split("ECDHE-")[0] for c in [gs.tls_ciphers])


def test_missing_binary_names_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install mosquitto"):
        check_binary(tmp_path / "nope")


def test_missing_compiler_names_packages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mosquitto-dev"):
        build_plugin(tmp_path, cc="no-such-cc")


def test_broker_log_lines_attributed_to_source() -> None:
    from fleetwarden.gateway.supervisor import _CONN_FAIL, _NEW_CONN, _SSL_ERR

    m = _NEW_CONN.match("New connection from 127.0.0.2:40412 on port 8883.")
    assert m is not None and m.group(1) == "127.0.0.2"
    m = _NEW_CONN.match("New connection from ::ffff:10.1.2.3:5000 on port 8883.")
    assert m is not None and m.group(1) == "::ffff:10.1.2.3"
    m = _SSL_ERR.match("OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed")
    assert m is not None and m.group(1) == "certificate verify failed"
    m = _CONN_FAIL.match(
        "Client connection from 127.0.0.9 failed: error:0A00009C:SSL routines::http request."
    )
    assert m is not None and m.groups() == ("127.0.0.9", "http request.")


@pytest.mark.parametrize(
    "rec",
    [
        {},
        {"kind": "auth_refused"},
        {"kind": "auth_refused", "device": 5, "address": ["x"], "reason": None},
        {"kind": "shared_credential", "device": "d", "client_id": {"a": 1}},
        {"kind": "connected", "device": "d" * 10_000},
        {"kind": "nonsense"},
    ],
)
def test_monitor_survives_malformed_reports(rec: dict[str, object]) -> None:
    from fleetwarden.gateway.service import Gateway

    ev, _durable = Gateway()._event_for(rec)
    if ev is not None:
        ev.to_ocsf()  # serialisable whatever came in
        assert ev.device_uid is None or len(ev.device_uid) <= 256


def test_crl_serials_reads_every_crl_of_a_pem_bundle(tmp_path: Path) -> None:
    """After an issuing-CA rollover the fleet CA publishes one CRL per issuing CA in
    one PEM file: the serials of all of them are refused."""
    a, b = ScratchPKI(tmp_path / "a"), ScratchPKI(tmp_path / "b")
    da, db = a.device("d1"), b.device("d2")
    a.revoke(da)
    b.revoke(db)
    bundle = tmp_path / "all.crl.pem"
    bundle.write_bytes(
        a.write_crl(tmp_path / "a.pem", pem=True).read_bytes()
        + b.write_crl(tmp_path / "b.pem", pem=True).read_bytes()
    )
    assert crl_serials(bundle) == {
        format(da.cert.serial_number, "x"),
        format(db.cert.serial_number, "x"),
    }
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN NOTHING-----\n")
    with pytest.raises(ValueError, match="no PEM CRL"):
        crl_serials(tmp_path / "junk.pem")
    broken = tmp_path / "broken.pem"
    broken.write_bytes(bundle.read_bytes().replace(b"MI", b"xx", 1))
    with pytest.raises(ValueError):
        crl_serials(broken)
