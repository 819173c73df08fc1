"""Real peers against a running fleetwarden: strongSwan ``pki --est`` (enrol + re-enrol),
curl + openssl by hand-built requests (enrol, mTLS re-enrol, revocation), and
``openssl verify -crl_check`` with the CRL fetched from the distribution point."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

pytestmark = [pytest.mark.interop]


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    return p


def key_state(fleet, device_id: str) -> dict:
    return fleet.service.key_state(device_id)


def test_pki_est_enrolls_and_reenrolls(fleet, tmp_path: Path) -> None:
    fleet.add_device("sw-1")
    token = fleet.cli("device", "token", "sw-1")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("fwe_") and "\n" not in secret  # alone on stdout
    host = fleet.base.replace("127.0.0.1", "localhost")
    cacerts = ["--cacert", str(fleet.paths.root_cert), "--cacert", str(fleet.paths.issuing_cert)]
    k1, k2 = tmp_path / "k1.der", tmp_path / "k2.der"
    for k in (k1, k2):
        k.write_bytes(
            subprocess.run(
                ["pki", "--gen", "--type", "ecdsa", "--size", "256"],
                capture_output=True,
                check=True,
            ).stdout
        )
    csr1 = subprocess.run(
        ["pki", "--req", "--in", str(k1), "--type", "ecdsa", "--dn", "CN=sw-1"],
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "csr1.der").write_bytes(csr1)
    p = run(
        "pki",
        "--est",
        "--url",
        host,
        *cacerts,
        "--in",
        str(tmp_path / "csr1.der"),
        "--userpass",
        f"sw-1:{secret}",
        "--outform",
        "pem",
    )
    (tmp_path / "c1.pem").write_text(p.stdout)
    c1 = x509.load_pem_x509_certificate((tmp_path / "c1.pem").read_bytes())
    assert c1.subject.rfc4514_string() == "CN=sw-1"
    # re-enrolment: TLS client auth with the current cert + key, fresh key in the CSR
    csr2 = subprocess.run(
        ["pki", "--req", "--in", str(k2), "--type", "ecdsa", "--dn", "CN=sw-1"],
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "csr2.der").write_bytes(csr2)
    p = run(
        "pki",
        "--est",
        "--url",
        host,
        *cacerts,
        "--in",
        str(tmp_path / "csr2.der"),
        "--cert",
        str(tmp_path / "c1.pem"),
        "--key",
        str(k1),
        "--outform",
        "pem",
    )
    (tmp_path / "c2.pem").write_text(p.stdout)
    c2 = x509.load_pem_x509_certificate((tmp_path / "c2.pem").read_bytes())
    assert c2.serial_number != c1.serial_number
    assert c2.public_key() != c1.public_key()
    certs = fleet.service.certificates("sw-1")
    assert [c["status"] for c in certs] == ["superseded", "active"]
    assert certs[1]["issued_via"] == "est-reenroll" and certs[1]["replaces"] == format(
        c1.serial_number, "x"
    )
    assert key_state(fleet, "sw-1")["rotations"] == 1
    # the same token cannot be replayed
    p = run(
        "pki",
        "--est",
        "--url",
        host,
        *cacerts,
        "--in",
        str(tmp_path / "csr1.der"),
        "--userpass",
        f"sw-1:{secret}",
        check=False,
    )
    assert p.returncode != 0


def _curl(fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return run("curl", "-sS", "--cacert", str(fleet.paths.root_cert), *args)


def test_curl_openssl_enroll_reenroll_verify_revoke(fleet, tmp_path: Path) -> None:
    fleet.add_device("curl-1")
    secret = fleet.token("curl-1")
    host = fleet.base.replace("127.0.0.1", "localhost")
    t = tmp_path
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(t / "k1.pem"))
    run(
        "openssl",
        "req",
        "-new",
        "-key",
        str(t / "k1.pem"),
        "-subj",
        "/CN=curl-1",
        "-outform",
        "DER",
        "-out",
        str(t / "r1.der"),
    )
    (t / "r1.b64").write_bytes(base64.encodebytes((t / "r1.der").read_bytes()))
    # cacerts first (what a device does to learn its trust anchors)
    _curl(fleet, "-o", str(t / "cacerts.b64"), f"{host}/.well-known/est/cacerts")
    (t / "cacerts.p7").write_bytes(base64.b64decode((t / "cacerts.b64").read_bytes()))
    out = run(
        "openssl", "pkcs7", "-inform", "DER", "-in", str(t / "cacerts.p7"), "-print_certs"
    ).stdout
    assert "issuing CA" in out and "root CA" in out
    _curl(
        fleet,
        "-u",
        f"curl-1:{secret}",
        "-H",
        "Content-Type: application/pkcs10",
        "-H",
        "Content-Transfer-Encoding: base64",
        "--data-binary",
        f"@{t / 'r1.b64'}",
        "-o",
        str(t / "c1.b64"),
        "-w",
        "%{http_code}",
        f"{host}/.well-known/est/simpleenroll",
    )
    (t / "c1.p7").write_bytes(base64.b64decode((t / "c1.b64").read_bytes()))
    run(
        "openssl",
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        str(t / "c1.p7"),
        "-print_certs",
        "-out",
        str(t / "c1.pem"),
    )
    text = run("openssl", "x509", "-in", str(t / "c1.pem"), "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in text
    assert "URI:urn:fleetwarden:device:curl-1" in text
    assert fleet.crl_url in text
    # re-enrol over mTLS with a fresh key (label form of the URL)
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(t / "k2.pem"))
    run(
        "openssl",
        "req",
        "-new",
        "-key",
        str(t / "k2.pem"),
        "-subj",
        "/CN=curl-1",
        "-outform",
        "DER",
        "-out",
        str(t / "r2.der"),
    )
    (t / "r2.b64").write_bytes(base64.b64encode((t / "r2.der").read_bytes()))
    code = _curl(
        fleet,
        "--cert",
        str(t / "c1.pem"),
        "--key",
        str(t / "k1.pem"),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{t / 'r2.b64'}",
        "-o",
        str(t / "c2.b64"),
        "-w",
        "%{http_code}",
        f"{host}/.well-known/est/device/simplereenroll",
    ).stdout
    assert code == "200", (t / "c2.b64").read_text()
    (t / "c2.p7").write_bytes(base64.b64decode((t / "c2.b64").read_bytes()))
    run(
        "openssl",
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        str(t / "c2.p7"),
        "-print_certs",
        "-out",
        str(t / "c2.pem"),
    )

    def verify(cert: Path) -> subprocess.CompletedProcess[str]:
        run("curl", "-sS", "-o", str(t / "crl.der"), fleet.crl_url)  # plain HTTP DP
        run(
            "openssl",
            "crl",
            "-inform",
            "DER",
            "-in",
            str(t / "crl.der"),
            "-out",
            str(t / "crl.pem"),
        )
        return run(
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(fleet.paths.root_cert),
            "-untrusted",
            str(fleet.paths.issuing_cert),
            "-CRLfile",
            str(t / "crl.pem"),
            str(cert),
            check=False,
        )

    ok = verify(t / "c2.pem")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    crl_text = run("openssl", "crl", "-in", str(t / "crl.pem"), "-noout", "-text").stdout
    assert "Issuing Distribution Point" in crl_text
    # revoke through the admin API (bearer token, no client certificate at TLS)
    code = _curl(
        fleet,
        "-X",
        "POST",
        "-H",
        f"Authorization: Bearer {fleet.admin_token}",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"reason": "key_compromise"}',
        "-o",
        str(t / "rev.json"),
        "-w",
        "%{http_code}",
        f"{fleet.base.replace('127.0.0.1', 'localhost')}/v1/devices/curl-1/revoke",
    ).stdout
    assert code == "200", (t / "rev.json").read_text()
    assert len(json.loads((t / "rev.json").read_text())["revoked"]) == 2
    bad = verify(t / "c2.pem")
    assert bad.returncode != 0 and "revoked" in (bad.stdout + bad.stderr)
    # and the revoked certificate can no longer re-enrol
    code = _curl(
        fleet,
        "--cert",
        str(t / "c2.pem"),
        "--key",
        str(t / "k2.pem"),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{t / 'r1.b64'}",
        "-o",
        str(t / "c3.txt"),
        "-w",
        "%{http_code}",
        f"{host}/.well-known/est/simplereenroll",
    ).stdout
    assert code == "401" and "revoked" in (t / "c3.txt").read_text()
    ev = [
        e
        for e in fleet.events()
        if e.get("unmapped", {}).get("changes", {}).get("identity_event") == "certificate.revoked"
    ]
    assert ev and ev[-1]["device"]["uid"] == "curl-1"
    assert ev[-1]["unmapped"]["changes"]["reason"] == "key_compromise"


def test_api_token_works_over_https_without_client_cert(fleet) -> None:
    r = httpx.get(
        f"{fleet.base}/v1/version",
        headers={"Authorization": f"Bearer {fleet.admin_token}"},
        verify=fleet.tls(),
    )
    assert r.status_code == 200


def test_cacerts_is_pkcs7_certs_only(fleet) -> None:
    r = httpx.get(f"{fleet.base}/.well-known/est/cacerts", verify=fleet.tls())
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/pkcs7-mime")
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))
    assert len(certs) == 2
    attrs = httpx.get(f"{fleet.base}/.well-known/est/csrattrs", verify=fleet.tls())
    assert attrs.status_code == 200 and base64.b64decode(attrs.content)[0] == 0x30


def test_cli_provision_batch_with_openssl_csrs(fleet, tmp_path: Path) -> None:
    for d in ("line-1", "line-2"):
        fleet.add_device(d)
        run(
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / f"{d}.key"),
            "-subj",
            f"/CN={d}",
            "-out",
            str(tmp_path / f"{d}.csr"),
        )
    (tmp_path / "junk.csr").write_bytes(b"not a csr")
    p = fleet.cli(
        "ca",
        "provision",
        str(tmp_path / "line-1.csr"),
        str(tmp_path / "line-2.csr"),
        str(tmp_path / "junk.csr"),
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    assert p.returncode == 65, p.stderr
    rows = json.loads(p.stdout)
    assert [("refused" in r) for r in rows] == [False, False, True]
    ok = run(
        "openssl",
        "verify",
        "-CAfile",
        str(fleet.paths.root_cert),
        "-untrusted",
        str(fleet.paths.issuing_cert),
        str(tmp_path / "out" / "line-1.crt"),
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


def test_revocation_event_regenerates_served_crl(fleet) -> None:
    """A revocation committed elsewhere (here: the service API without regenerating)
    reaches the running service through the outbox relay and the bus; the CRL served at
    the distribution point lists it shortly after."""
    import time

    from cryptography.hazmat.primitives.asymmetric import ec

    from fleetwarden.registry import Actor

    fleet.add_device("bus-1")
    key = ec.generate_private_key(ec.SECP256R1())
    from identity_support import make_csr

    _, der = make_csr("bus-1", key)
    from fleetwarden.identity.service import TokenAuth

    issued = fleet.service.enroll(der, TokenAuth("bus-1", fleet.token("bus-1")))
    fleet.service.revoke("bus-1", "cessation_of_operation", Actor("test"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        crl = x509.load_der_x509_crl(httpx.get(fleet.crl_url).content)
        if crl.get_revoked_certificate_by_serial_number(issued.cert.serial_number) is not None:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the served CRL never listed the revoked certificate")
