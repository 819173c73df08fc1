"""Every evidence parser under malformed input: a result or EvidenceError, nothing else.

And the collector on hostile bundles: never raises, lists every bad file with a reason.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwarden.assess.engine import assess
from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import (
    _io,
    broker,
    collect,
    components,
    documents,
    firmware,
    logs,
    network,
    pki,
)

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
text = st.text(max_size=2000)
blob = st.binary(max_size=4000)


def ok_or_evidence_error(fn, *args):  # type: ignore[no-untyped-def]
    with contextlib.suppress(EvidenceError):
        fn(*args)


@FUZZ
@given(blob)
def test_pem_der_garbage(data: bytes) -> None:
    ok_or_evidence_error(pki.parse_certs, data, "x")
    ok_or_evidence_error(
        pki.parse_certs,
        b"-----BEGIN CERTIFICATE-----\n" + data + b"\n-----END CERTIFICATE-----\n",
        "x",
    )
    ok_or_evidence_error(pki.parse_crl, data, "x")


def _der(bundles: dict[str, Path]) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(
        (bundles["clean"] / "certs" / "dev-001.pem").read_bytes()
    ).public_bytes(Encoding.DER)


def test_truncated_and_flipped_der(bundles: dict[str, Path]) -> None:
    der = _der(bundles)
    assert pki.parse_certs(der, "x")[0].subject_cn == "dev-001"
    for cut in range(0, len(der), 7):
        with pytest.raises(EvidenceError):
            pki.parse_certs(der[:cut], "x")
    for i in range(0, len(der), 11):
        flipped = der[:i] + bytes([der[i] ^ 0xFF]) + der[i + 1 :]
        ok_or_evidence_error(pki.parse_certs, flipped, "x")


@FUZZ
@given(text)
def test_text_parsers(t: str) -> None:
    ok_or_evidence_error(broker.parse_conf, t, "x")
    ok_or_evidence_error(broker.parse_acl, t)
    ok_or_evidence_error(broker.parse_passwords, t)
    ok_or_evidence_error(network.parse_firewall, t, "x")
    ok_or_evidence_error(network.parse_firewall, "table inet filter {\n" + t, "x")
    ok_or_evidence_error(network.parse_firewall, "*filter\n" + t, "x")
    ok_or_evidence_error(network.parse_vlans, t, "x")
    ok_or_evidence_error(network.parse_vlans, "vlan,name,purpose,cidr\n" + t, "x")
    ok_or_evidence_error(components.parse_sbom, t, "x")
    ok_or_evidence_error(components.parse_osv, t, "x")
    ok_or_evidence_error(documents.parse_policy, t, "x")
    documents.parse_incident_plan(t, "x")
    logs.parse_lines(t.splitlines(), "x")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(json_values)
def test_json_shapes(v: object) -> None:
    import json

    for wrap in (
        v,
        {"bomFormat": "CycloneDX", "components": v},
        {"id": "X", "affected": v},
        [{"id": "X", "affected": [{"package": v, "ranges": v, "versions": v}]}],
    ):
        t = json.dumps(wrap)
        ok_or_evidence_error(components.parse_sbom, t, "x")
        ok_or_evidence_error(components.parse_osv, t, "x")


def test_deeply_nested_json() -> None:
    with pytest.raises(EvidenceError):
        components.parse_sbom("[" * 100000 + "]" * 100000, "x")


@FUZZ
@given(blob)
def test_firmware_garbage(data: bytes) -> None:
    header = struct.pack("<IIHHIIBBHII", 0x96F3B83D, 0, 32, 0, len(data), 0, 1, 0, 0, 0, 0)
    for d in (data, header + data, header + data + struct.pack("<HH", 0x6907, 0xFFFF)):
        img = firmware.parse_image(d, "fw.bin", {})
        assert img.format in {"raw", "mcuboot"}


def test_firmware_mutations(bundles: dict[str, Path]) -> None:
    keys = {"k": firmware.read_key(bundles["clean"] / "firmware" / "keys" / "release.pub.pem")}
    good = (bundles["clean"] / "firmware" / "em200-1.0.0.bin").read_bytes()
    img = firmware.parse_image(good, "a.bin", keys)
    assert img.signature_valid is True and img.hash_ok
    # truncations and byte flips in the header and TLV area never crash, never verify
    tlv = len(good) - 200
    for cut in [*range(0, 64, 3), *range(tlv, len(good), 5)]:
        t = firmware.parse_image(good[:cut], "a.bin", keys)
        assert t.signature_valid is not True
    for i in [*range(0, 32), *range(40, 6000, 397), *range(tlv, len(good), 3)]:
        flipped = good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1 :]
        t = firmware.parse_image(flipped, "a.bin", keys)
        if t.signature_valid:
            assert flipped[:i] == good[:i] and i >= tlv  # only unprotected TLV padding may change


@FUZZ
@given(st.binary(max_size=3000))
def test_hostile_inventory(tmp_path: Path, data: bytes) -> None:
    for name in ("inventory.csv", "inventory.jsonl"):
        p = tmp_path / name
        p.write_bytes(
            b"device_id,model,open_ports,last_seen\n" + data if name.endswith("csv") else data
        )
        devices: dict[str, object] = {}
        problems: list[str] = []
        from fleetwarden.assess.evidence import inventory

        ok_or_evidence_error(inventory.parse, p, tmp_path, devices, problems)
        assert len(problems) <= inventory.MAX_PROBLEMS


def test_inventory_wrong_encoding_and_huge_field(tmp_path: Path) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "inventory.csv").write_bytes("device_id,model\nd1,Zähler\n".encode("latin-1"))
    ev = collect(root)
    assert "inventory" not in ev.present and ev.devices == {}
    assert ev.skipped[0].path == "inventory.csv" and "UTF" in ev.skipped[0].reason
    (root / "inventory.csv").write_text("device_id,model\nd1," + "x" * 200_000 + "\nd2,ok\n")
    ev = collect(root)
    assert "d2" not in ev.devices or ev.inventory_bad_rows >= 1
    (root / "inventory.csv").write_text(
        "device_id,model\nd1,ok\nbad id,x\nd1,dup\n", encoding="utf-16"
    )
    ev = collect(root)
    assert set(ev.devices) == {"d1"} and ev.inventory_bad_rows == 2
    a = assess(ev)
    f = next(f for f in a.findings if f.check_id == "hardening_inventory_rows_invalid")
    assert f.status == "FAIL"


def test_symlinks_oversized_and_specials_are_listed(
    tmp_path: Path, bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "b"
    (root / "certs").mkdir(parents=True)
    (root / "crls").mkdir()
    (root / "firmware").mkdir()
    secret = tmp_path / "secret.pem"
    secret.write_bytes((bundles["clean"] / "certs" / "dev-001.pem").read_bytes())
    (root / "certs" / "link.pem").symlink_to(secret)
    (root / "certs" / "ok.pem").write_bytes(secret.read_bytes())
    (root / "certs" / "garbage.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (root / "logs").symlink_to(tmp_path)  # a symlinked directory
    (root / "policy.toml").symlink_to(secret)
    os.mkfifo(root / "crls" / "fifo.crl")
    monkeypatch.setitem(_io.LIMITS, "firmware", 1000)
    (root / "firmware" / "big.bin").write_bytes(b"\0" * 2000)
    ev = collect(root)
    reasons = {s.path: s.reason for s in ev.skipped}
    assert reasons["certs/link.pem"] == "symlink refused"
    assert "not a PEM or DER" in reasons["certs/garbage.pem"]
    assert reasons["logs"] == "symlinked directory refused"
    assert reasons["policy.toml"] == "symlink refused"
    assert reasons["crls/fifo.crl"] == "not a regular file"
    assert "limit 1000" in reasons["firmware/big.bin"]
    assert [c.subject_cn for c in ev.certs] == ["dev-001"]
    a = assess(ev)
    by = {f.check_id: f for f in a.findings}
    # readable certificates are checked; the unreadable ones are MANUAL resources, never FAIL
    assert "certs/garbage.pem" in by["identity_key_too_short"].manual
    assert by["identity_key_too_short"].status == "PASS"
    # no readable firmware at all: MANUAL with the reason, not FAIL
    fw = by["firmware_image_unsigned"]
    assert fw.status == "MANUAL" and "limit 1000" in " ".join(fw.details.values())
    assert by["rotation_policy_missing"].status == "MANUAL"
    assert not a.failing or all(f.check_id != "firmware_image_unsigned" for f in a.failing)


def test_broker_missing_referenced_files_give_manual(tmp_path: Path) -> None:
    root = tmp_path / "b"
    (root / "broker").mkdir(parents=True)
    (root / "broker" / "mosquitto.conf").write_text(
        "listener 8883\ncafile /x\nrequire_certificate true\nacl_file /etc/mosquitto/acl\npassword_file /etc/mosquitto/pw\n"
    )
    a = assess(collect(root))
    by = {f.check_id: f for f in a.findings}
    for cid in (
        "segmentation_acl_overly_permissive",
        "identity_default_password",
        "identity_broker_shared_password",
    ):
        assert by[cid].status == "MANUAL", cid
    assert by["transport_client_certificate_not_required"].status == "PASS"


def test_empty_bundle_is_all_manual(tmp_path: Path) -> None:
    a = assess(collect(tmp_path))
    assert a.failing == [] and a.danger is False
    assert all(f.status == "MANUAL" for f in a.findings)
    assert all(v["status"] == "manual" for v in a.controls.values())


cell = st.one_of(
    st.sampled_from(["", " ", "x", "dev-1", "energy", "Energy", "low", "high", "tpm", "file", "public", "private",
                     "10.0.0.1", "::1", "300.1.1.1", "10.0.0.0/8", "10.0.0.0/8;192.168.0.0/16", "bad/cidr", "true",
                     "false", "maybe", "0", "4095", "20", "a;b", "bad name", "8883;23", "70000", "2026-01-01T00:00:00",
                     "yesterday", "1.2.3", "x" * 70, "x" * 130]),
    st.text(max_size=12),
)  # fmt: skip
COLS = ["device_id", "model", "hardware_revision", "risk_class", "sector", "firmware_version", "key_storage", "apn", "ip",
        "ip_fixed", "allowed_cidrs", "vlan", "groups", "password_hash", "open_ports", "debug_ports_enabled",
        "secure_boot", "last_seen", "site"]  # fmt: skip


@FUZZ
@given(st.lists(cell, min_size=len(COLS), max_size=len(COLS)))
def test_fast_inventory_path_agrees_with_the_registry_schema(cells: list[str]) -> None:
    """The fast CSV path accepts exactly what the registry import accepts, with the same values."""
    from fleetwarden.assess.evidence import inventory

    cols, extra = inventory.plan_columns(COLS)
    try:
        slow = inventory.to_device(
            {h: inventory.cell_value(h, c) for h, c in zip(COLS, cells, strict=True)}
        )
    except (ValueError, TypeError):
        slow = None
    try:
        fast = inventory.fast_device(cells, cols, extra)
    except (ValueError, TypeError):
        fast = None
    if fast is not None:
        assert slow == fast
