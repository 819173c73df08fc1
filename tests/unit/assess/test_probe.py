"""The live TLS probe against local ``ssl`` servers on ephemeral ports (loopback only).

Real handshakes with CPython's OpenSSL on both sides; nothing is faked.
"""

from __future__ import annotations

import json
import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tls_servers import Server, write_cert

from fleetwarden.assess.checks import by_id
from fleetwarden.assess.engine import Assessment, assess
from fleetwarden.assess.evidence import Evidence, collect
from fleetwarden.assess.evidence.probe import (
    _leaf,
    collect_probes,
    parse_cert,
    parse_endpoint,
    probe,
)
from fleetwarden.cli import main

PROBE_CHECKS = (
    "transport_probe_client_cert_not_required",
    "transport_probe_old_tls_accepted",
    "transport_probe_weak_ciphers_accepted",
    "transport_probe_certificate_invalid",
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("tls")
    return {"good": write_cert(d, "good"), "expired": write_cert(d, "expired", expired=True)}


def _run(*endpoints: str) -> Assessment:
    ev = collect_probes(Evidence(root="probe"), list(endpoints))
    checks = by_id()
    return assess(ev, checks=[checks[c] for c in PROBE_CHECKS])


def _status(a: Assessment) -> dict[str, str]:
    return {f.check_id: f.status for f in a.findings}


@pytest.fixture
def closed_port() -> int:
    # bind then close: nothing listens there afterwards
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_mtls_tls12_plus_passes(certs: dict[str, tuple[Path, Path]]) -> None:
    with Server(*certs["good"], require_client_cert=True) as s:
        p = probe(s.endpoint)
        a = _run(s.endpoint)
    assert p.client_cert == "required"
    assert p.versions["TLSv1.2"] == "accepted" and p.versions["TLSv1.3"] == "accepted"
    assert p.versions["TLSv1.0"] in {"refused", "unknown"}
    assert p.certificate is not None and p.certificate.key_type == "EC secp256r1"
    assert p.certificate.self_signed and not p.certificate.expired
    res = _status(a)
    assert res["transport_probe_client_cert_not_required"] == "PASS"
    assert res["transport_probe_weak_ciphers_accepted"] == "PASS"
    assert res["transport_probe_certificate_invalid"] == "PASS"
    # PASS, or MANUAL when the local OpenSSL cannot offer TLS 1.0/1.1 at all; never FAIL
    assert res["transport_probe_old_tls_accepted"] in {"PASS", "MANUAL"}


def test_mtls_tls12_only_reads_certificate_from_the_handshake(
    certs: dict[str, tuple[Path, Path]],
) -> None:
    # TLS 1.2 mTLS servers abort the handshake: the certificate comes from its message
    with Server(*certs["expired"], require_client_cert=True, maximum=ssl.TLSVersion.TLSv1_2) as s:
        p = probe(s.endpoint)
        a = _run(s.endpoint)
    assert p.client_cert == "required"
    assert p.versions["TLSv1.2"] == "accepted" and p.versions["TLSv1.3"] == "refused"
    assert p.certificate is not None and p.certificate.expired
    res = _status(a)
    assert res["transport_probe_client_cert_not_required"] == "PASS"
    assert res["transport_probe_certificate_invalid"] == "FAIL"


@given(st.binary(max_size=300), st.booleans())
def test_certificate_message_parser_never_raises(data: bytes, tls13: bool) -> None:
    der = _leaf(data, tls13=tls13)
    if der is not None:
        parse_cert(der, datetime.now(UTC))  # returns an error record on garbage


def test_no_client_certificate_fails_with_m3(certs: dict[str, tuple[Path, Path]]) -> None:
    with Server(*certs["good"]) as s:
        a = _run(s.endpoint)
        ep = s.endpoint
    f = {f.check_id: f for f in a.findings}["transport_probe_client_cert_not_required"]
    assert f.status == "FAIL" and f.resources == [ep]
    assert f.mistakes == ("M3",) and f.controls == ("C2",)
    assert a.mistakes["M3"]["present"]


def test_tls10_enabled_fails(certs: dict[str, tuple[Path, Path]]) -> None:
    try:
        with Server(*certs["good"], minimum=ssl.TLSVersion.TLSv1, ciphers="ALL:@SECLEVEL=0") as s:
            p = probe(s.endpoint)
            a = _run(s.endpoint)
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"local OpenSSL cannot serve TLS 1.0: {exc}")
    if p.versions["TLSv1.0"] == "unknown":
        pytest.skip("local OpenSSL cannot offer TLS 1.0")
    assert p.versions["TLSv1.0"] == "accepted"
    f = {f.check_id: f for f in a.findings}["transport_probe_old_tls_accepted"]
    assert f.status == "FAIL" and "TLSv1.0" in next(iter(f.details.values()))


def test_anonymous_suites_fail(certs: dict[str, tuple[Path, Path]]) -> None:
    try:
        with Server(*certs["good"], ciphers="ALL:aNULL:@SECLEVEL=0") as s:
            p = probe(s.endpoint)
            a = _run(s.endpoint)
    except ssl.SSLError as exc:
        pytest.skip(f"local OpenSSL has no anonymous suites: {exc}")
    if p.weak_ciphers["anonymous DH/ECDH"] == "unknown":
        pytest.skip("local OpenSSL cannot offer anonymous suites")
    assert p.weak_ciphers["anonymous DH/ECDH"].startswith("accepted")
    assert _status(a)["transport_probe_weak_ciphers_accepted"] == "FAIL"


def test_expired_self_signed_certificate_fails(certs: dict[str, tuple[Path, Path]]) -> None:
    with Server(*certs["expired"], require_client_cert=True) as s:
        a = _run(s.endpoint)
    f = {f.check_id: f for f in a.findings}["transport_probe_certificate_invalid"]
    assert f.status == "FAIL"
    detail = next(iter(f.details.values()))
    assert "expired" in detail and "self-signed" in detail


def test_closed_port_and_bad_endpoint_are_manual(closed_port: int) -> None:
    a = _run(f"127.0.0.1:{closed_port}", "not an endpoint", "[::1]:0")
    for f in a.findings:
        assert f.status == "MANUAL", f.check_id
        assert f.resources == []
    p = a.evidence.tls_probes[0]
    assert not p.reachable and p.error.startswith("unreachable")
    assert a.evidence.tls_probes[1].error and a.evidence.tls_probes[2].error


def test_without_probe_evidence_checks_are_manual(tmp_path: Path) -> None:
    a = assess(Evidence(root=str(tmp_path)), checks=[by_id()[c] for c in PROBE_CHECKS])
    for f in a.findings:
        assert f.status == "MANUAL" and "missing evidence: tls_probe" in f.details["evidence"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("broker.example.com:8883", ("broker.example.com", 8883)),
        ("10.0.0.1:443", ("10.0.0.1", 443)),
        ("[2001:db8::1]:8883", ("2001:db8::1", 8883)),
        (" localhost:1 ", ("localhost", 1)),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", "host:0", "host:65536", "host:x", "::1:443", "[::1]", "[nope]:1", "a b:1",
     "1.2.3:4", "-bad-:1", "a:1:2", "x" * 400 + ":1", "host:+1", "a\nb:1"],
)  # fmt: skip
def test_parse_endpoint_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_cli_probe_flag(
    certs: dict[str, tuple[Path, Path]],
    bundles: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Server(*certs["good"]) as s:
        code = 0
        try:
            main(["assess", str(bundles["clean"]), "--out", str(tmp_path / "o"), "--no-pdf",
                  "--json", "--probe-tls", s.endpoint])  # fmt: skip
        except SystemExit as exc:
            code = int(exc.code or 0)
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["failing"] == 1  # the one-way TLS endpoint, nothing else
    doc = json.loads((tmp_path / "o" / "findings.json").read_text())
    failing = [f["check_id"] for f in doc["findings"] if f["status"] == "FAIL"]
    assert failing == ["transport_probe_client_cert_not_required"]
    assert "tls_probe" in doc["evidence"]["present"]


def test_policy_endpoints_need_the_flag(bundles: dict[str, Path]) -> None:
    # a bundle's policy.toml alone never makes the assessment touch the network
    ev = collect(bundles["clean"])
    assert not ev.has("tls_probe") and ev.tls_probes == []
