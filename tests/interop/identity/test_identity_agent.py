"""The device agent (real CLI process) against the running server: enrol with a token,
status, forced renewal with a fresh key, failed renewal keeps the identity, expired
certificate re-bootstraps with the factory identity."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetwarden.agent import Agent, AgentConfig
from fleetwarden.agent.core import AgentError

pytestmark = [pytest.mark.interop]


def agent_cli(fleet, state: Path, *args: str):
    return fleet.cli("agent", *args, "--state-dir", str(state))


def test_agent_enroll_status_renew(fleet, tmp_path: Path) -> None:
    fleet.add_device("agent-1")
    state = tmp_path / "agent"
    tok = fleet.token("agent-1")
    p = fleet.cli(
        "agent",
        "enroll",
        "--state-dir",
        str(state),
        "--server",
        fleet.base.replace("127.0.0.1", "localhost"),
        "--device-id",
        "agent-1",
        "--ca-file",
        str(fleet.paths.root_cert),
        "--token",
        tok,
        "--json",
    )
    assert p.returncode == 0, p.stderr + p.stdout
    st = json.loads(p.stdout)
    assert st["enrolled"] and not st["due"] and not st["renewal_in_flight"]
    nb, na = datetime.fromisoformat(st["not_before"]), datetime.fromisoformat(st["not_after"])
    renew_at = datetime.fromisoformat(st["renew_at"])
    frac = (renew_at - nb) / (na - nb)
    assert 2 / 3 - 0.051 <= frac <= 2 / 3 + 0.051
    assert stat.S_IMODE(os.stat(state / "key.pem").st_mode) == 0o600
    old_key = (state / "key.pem").read_bytes()
    p = agent_cli(fleet, state, "renew")
    assert p.returncode == 0 and "not due" in p.stdout
    p = agent_cli(fleet, state, "renew", "--force", "--json")
    assert p.returncode == 0, p.stderr + p.stdout
    st2 = json.loads(p.stdout)
    assert st2["serial"] != st["serial"] and (state / "key.pem").read_bytes() != old_key
    assert not (state / "key.new.pem").exists()
    assert fleet.service.key_state("agent-1")["rotations"] == 1
    # a refused renewal keeps the current identity
    fleet.service.revoke("agent-1", "key_compromise", fleet_actor())
    cert_before = (state / "cert.pem").read_bytes()
    key_before = (state / "key.pem").read_bytes()
    p = agent_cli(fleet, state, "renew", "--force")
    assert p.returncode == 75 and "revoked" in (p.stdout + p.stderr)
    assert (state / "cert.pem").read_bytes() == cert_before and (
        state / "key.pem"
    ).read_bytes() == key_before
    p = agent_cli(fleet, state, "status", "--json")
    assert json.loads(p.stdout)["renewal_in_flight"] is True


def fleet_actor():
    from fleetwarden.registry import Actor

    return Actor("test")


def test_expired_offline_rebootstraps_with_factory_identity(fleet, tmp_path: Path) -> None:
    fleet.add_device("agent-2")
    fkey = ec.generate_private_key(ec.SECP256R1())
    fcert = fleet.factory_cert("agent-2", fkey)
    (tmp_path / "f.crt").write_bytes(fcert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "f.key").write_bytes(
        fkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    state = tmp_path / "agent"
    cfg = AgentConfig(
        server=fleet.base.replace("127.0.0.1", "localhost"),
        device_id="agent-2",
        ca_file=str(fleet.paths.root_cert),
        factory_cert=str(tmp_path / "f.crt"),
        factory_key=str(tmp_path / "f.key"),
    )
    agent = Agent(state, cfg)
    first = agent.enroll()  # factory bootstrap, no token
    assert fleet.service.certificates("agent-2")[0]["issued_via"] == "est-factory"
    # simulate a long time offline: the installed certificate is now expired
    past = datetime.now(UTC) - timedelta(days=40)
    expired = fleet.service.ca.issue_device(
        "agent-2",
        x509.load_pem_x509_certificate((state / "cert.pem").read_bytes()).public_key(),
        now=past,
    )
    (state / "cert.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    again = Agent(state).renew()
    assert again is not None and again.serial_number != first.serial_number
    assert fleet.service.certificates("agent-2")[-1]["issued_via"] == "est-factory"
    # without a factory identity an expired agent says what to do
    cfg2 = AgentConfig(server=cfg.server, device_id="agent-2", ca_file=cfg.ca_file)
    a2 = Agent(tmp_path / "other", cfg2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cert.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AgentError, match="new token"):
        a2.renew()


def test_agent_refuses_a_certificate_for_another_key(fleet, tmp_path: Path) -> None:
    agent = Agent(
        tmp_path, AgentConfig(server=fleet.base, device_id="x", ca_file=str(fleet.paths.root_cert))
    )
    other = ec.generate_private_key(ec.SECP256R1())
    cert = fleet.service.ca.issue_device("x", other.public_key())
    with pytest.raises(AgentError, match="new key"):
        agent._confirm(cert, ec.generate_private_key(ec.SECP256R1()), [fleet.service.ca.cert])
    mine = ec.generate_private_key(ec.SECP256R1())
    good = fleet.service.ca.issue_device("x", mine.public_key())
    assert agent._confirm(good, mine, [fleet.service.ca.cert]) is good
    with pytest.raises(AgentError, match="chain"):
        agent._confirm(good, mine, [])
