"""The revoke_certificate mitigation with the real IdentityService and fleet CA on the
registry (SQLite and PostgreSQL): the certificate is revoked, the 5019 revocation event
(the one the gateway acts on) is in the outbox naming the alert, the CRL lists it; with
no CA or no certificate the alert says so instead of claiming success."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetwarden.detect.alerts import AlertStore
from fleetwarden.detect.engine import Signal
from fleetwarden.detect.mitigation import mitigations
from fleetwarden.detect.rules import AlertSeverity, MitigationSpec
from fleetwarden.detect.service import run_mitigation
from fleetwarden.events import Event
from fleetwarden.identity.ca import FleetCA, init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.service import IdentityService, Issued, TokenAuth, revocation_of
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate

OP = Actor("cli:tester")


def _signal(dev: str, action: str, mode: str = "approval", key: str = "rule:cloned") -> Signal:
    return Signal(
        kind="alarm",
        device_id=dev,
        key=key,
        start=1_800_000_000,
        severity=AlertSeverity.HIGH,
        title="certificate used from a new network",
        evidence={"value": 1},
        mitigation=MitigationSpec(action=action, mode=mode),  # type: ignore[arg-type]
    )


@pytest.fixture
def svc(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityService:
    # a CA made the way tests/integration/identity makes one
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    ca = init_ca(tmp_path, IdentitySettings())
    for d in ("d1", "d2"):
        registry.add_device(DeviceCreate(id=d), OP)
    return IdentityService(registry, ca)


def _enroll(svc: IdentityService, device: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    out = svc.enroll(der, TokenAuth(device, svc.create_token(device, OP)))
    assert isinstance(out, Issued)
    return out


def _revocations(registry: Registry) -> list[Event]:
    evs = [Event.from_ocsf(p) for _, p in registry.pending_events(10_000)]
    return [e for e in evs if revocation_of(e) is not None]


def test_revoke_certificate_mitigation_revokes_with_the_fleet_ca(
    registry: Registry, svc: IdentityService
) -> None:
    issued = _enroll(svc, "d1")
    serial = issued.serial
    _enroll(svc, "d2")
    store = AlertStore(registry)
    alert = store.apply(_signal("d1", "revoke_certificate"))
    assert alert is not None and alert.mitigation["state"] == "pending_approval"
    mits = mitigations(registry, state=SimpleNamespace(identity=svc))

    out = run_mitigation(store, mits, alert.id, OP)

    assert out.mitigation["state"] == "done", out.mitigation
    assert serial in out.mitigation["detail"]
    certs = {c["serial"]: c["status"] for c in svc.certificates("d1")}
    assert certs == {serial: "revoked"}
    assert all(c["status"] != "revoked" for c in svc.certificates("d2"))  # only that device
    (ev,) = _revocations(registry)
    device_id, serials, _ = revocation_of(ev)  # type: ignore[misc]
    assert device_id == "d1" and list(serials) == [serial]
    assert ev.data["unmapped"]["changes"]["reason"] == "key_compromise"
    assert alert.id in ev.actor and OP.name in ev.actor  # who approved, for which alert
    crl = x509.load_der_x509_crl(svc.ca.paths.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(issued.cert.serial_number)
    # approving again does not revoke twice
    again = run_mitigation(store, mits, alert.id, OP)
    assert again.mitigation["state"] == "done" and len(_revocations(registry)) == 1


def test_revoke_without_certificate_fails_visibly_and_can_be_retried(
    registry: Registry, svc: IdentityService
) -> None:
    store = AlertStore(registry)
    alert = store.apply(_signal("d1", "revoke_certificate"))
    assert alert is not None
    mits = mitigations(registry, state=SimpleNamespace(identity=svc))
    out = run_mitigation(store, mits, alert.id, OP)
    assert out.mitigation["state"] == "failed"
    assert "no unrevoked, unexpired certificate" in out.mitigation["detail"]
    assert _revocations(registry) == []
    _enroll(svc, "d1")  # the retry (approval again) acts once there is something to revoke
    assert run_mitigation(store, mits, alert.id, OP).mitigation["state"] == "done"


def test_auto_mitigation_without_ca_or_broker_reports_not_wired(registry: Registry) -> None:
    registry.add_device(DeviceCreate(id="d1"), OP)
    store = AlertStore(registry)
    mits = mitigations(registry, state=SimpleNamespace())  # no identity, no gateway
    a = store.apply(_signal("d1", "revoke_certificate", "auto"))
    assert a is not None
    out = run_mitigation(store, mits, a.id, OP)
    assert out.mitigation["state"] == "not_wired" and "no fleet CA" in out.mitigation["detail"]
    b = store.apply(_signal("d1", "drop_session", "auto", key="rule:other"))
    assert b is not None
    out = run_mitigation(store, mits, b.id, OP)
    assert out.mitigation["state"] == "not_wired"
    assert "broker is not running" in out.mitigation["detail"]
    assert _revocations(registry) == []


def test_api_approve_reaches_the_identity_service_on_app_state(
    registry: Registry, svc: IdentityService, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from fleetwarden.api import create_app
    from fleetwarden.registry.schemas import Role, TokenCreate
    from fleetwarden.settings import load_settings

    _enroll(svc, "d1")
    store = AlertStore(registry)
    a = store.apply(_signal("d1", "revoke_certificate"))
    b = store.apply(_signal("d2", "revoke_certificate"))
    assert a is not None and b is not None
    tok = registry.create_token(TokenCreate(name="op", role=Role.OPERATOR), Actor("t"))
    hdr = {"Authorization": f"Bearer {tok.token}"}
    bare = create_app(load_settings(tmp_path / "bare"), registry)
    with TestClient(bare) as c:  # no identity control in this app: says so, acts not
        r = c.post(f"/v1/alerts/{a.id}/approve", headers=hdr)
        assert r.status_code == 200 and r.json()["mitigation"]["state"] == "not_wired"
    assert all(x["status"] != "revoked" for x in svc.certificates("d1"))
    app = create_app(load_settings(tmp_path / "up"), registry)
    app.state.identity = svc  # what the identity component does under `up`
    with TestClient(app) as c:
        r = c.post(f"/v1/alerts/{a.id}/approve", headers=hdr)
        assert r.status_code == 200 and r.json()["mitigation"]["state"] == "done"
        r = c.post(f"/v1/alerts/{b.id}/approve", headers=hdr)  # d2 has no certificate
        assert r.status_code == 200 and r.json()["mitigation"]["state"] == "failed"
    assert [x["status"] for x in svc.certificates("d1")] == ["revoked"]
    (ev,) = _revocations(registry)
    assert ev.actor is not None and ev.actor.startswith("token:") and a.id in ev.actor


def test_cli_approve_revokes_with_the_ca_on_disk(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    from fleetwarden.cli import main
    from fleetwarden.settings import load_settings

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    assert run("init", "--no-ca")[0] == 0
    s = load_settings(data_dir)
    reg = Registry.open(s.effective_database_url)
    try:
        reg.add_device(DeviceCreate(id="d1"), OP)
        store = AlertStore(reg)
        a = store.apply(_signal("d1", "revoke_certificate"))
        d = store.apply(_signal("d1", "drop_session", key="rule:other"))
        assert a is not None and d is not None
        code, out, _ = run("alerts", "approve", a.id)  # no fleet CA yet
        assert code == 69 and "not_wired" in out
        assert run("ca", "init")[0] == 0
        svc = IdentityService(reg, FleetCA.load(s.data_dir, s.identity))
        issued = _enroll(svc, "d1")
        code, out, _ = run("alerts", "approve", a.id)
        assert code == 0 and "done" in out and issued.serial in out
        assert [x["status"] for x in svc.certificates("d1")] == ["revoked"]
        code, out, _ = run("alerts", "approve", d.id)  # the broker is not in this process
        assert code == 69 and "broker is not running" in out
    finally:
        reg.close()
