"""The device agent (real CLI processes) with its key in a PKCS#11 token (SoftHSM2):
enrolment generates the key ON the token (sensitive, never extractable), renewal
authenticates over mTLS with the token key (OpenSSL pkcs11 engine through
fleetwarden.identity.tlskey) and rotates to a fresh on-token key; no key file ever
exists. Each failure mode of the token path gives a clear error and keeps the identity.

The agent and the token inspection run in their own processes: SoftHSM2 reads its
configuration once per process, and this pytest process may already have initialised it
for another test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from identity_support import TPM2_PKCS11, tpm2_pkcs11_token

pytestmark = [pytest.mark.interop]

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
PIN = "97531"
TOKEN = "fwagent"

INSPECT = """
import json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.util.ec import encode_ec_public_key
tok = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
out = {}
with tok.open(user_pin=sys.argv[3]) as s:
    for k in list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
        try:
            k[Attribute.VALUE]
            value_readable = True
        except pkcs11.PKCS11Error:
            value_readable = False
        pub = s.get_key(label=k.label, object_class=ObjectClass.PUBLIC_KEY)
        out[k.label] = {
            "sensitive": k[Attribute.SENSITIVE],
            "extractable": k[Attribute.EXTRACTABLE],
            "value_readable": value_readable,
            "pub": bytes(encode_ec_public_key(pub)).hex(),
        }
print(json.dumps(out))
"""


@pytest.fixture
def token_env(tmp_path: Path) -> dict[str, str]:
    if not (Path(MODULE).exists() and ENGINE.exists()):
        pytest.fail("needs softhsm2 and libengine-pkcs11-openssl (.ci/apt/identity.txt)")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "FLEETWARDEN_PKCS11_PIN": PIN}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN]
        + ["--pin", PIN, "--so-pin", "24680"],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return env


def token_keys(
    env: dict[str, str], module: str = MODULE, token: str = TOKEN
) -> dict[str, dict[str, Any]]:
    p = subprocess.run(
        [sys.executable, "-c", INSPECT, module, token, PIN],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def agent(fleet, env: dict[str, str], state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwarden", "agent", *args, "--state-dir", str(state)],
        env={**env, "FLEETWARDEN_DATA_DIR": str(fleet.data)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def no_key_files(state: Path) -> None:
    assert not (state / "key.pem").exists() and not (state / "key.new.pem").exists()
    for f in state.rglob("*"):
        if f.is_file():
            assert b"PRIVATE KEY" not in f.read_bytes(), f


def enrol(
    fleet,
    env: dict[str, str],
    state: Path,
    device_id: str,
    module: str = MODULE,
    token: str = TOKEN,
) -> dict[str, Any]:
    fleet.add_device(device_id)
    p = agent(
        fleet,
        env,
        state,
        "enroll",
        "--server",
        fleet.base.replace("127.0.0.1", "localhost"),
        "--device-id",
        device_id,
        "--ca-file",
        str(fleet.paths.root_cert),
        "--token",
        fleet.token(device_id),
        "--key-backend",
        "pkcs11",
        "--pkcs11-module",
        module,
        "--pkcs11-token-label",
        token,
        "--json",
    )
    assert p.returncode == 0, p.stderr + p.stdout
    return dict(json.loads(p.stdout))


def spki(pub: Any) -> bytes:
    return bytes(
        pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def test_token_agent_enrols_and_renews_over_mtls_with_the_token_key(
    fleet, token_env: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    st = enrol(fleet, token_env, state, "tok-agent-1")
    assert st["enrolled"] and st["key_backend"] == "pkcs11" and st["key_mode"] is None
    label1 = st["token_key_label"]
    keys = token_keys(token_env)
    assert set(keys) == {label1}
    assert keys[label1]["sensitive"] is True and keys[label1]["extractable"] is False
    assert keys[label1]["value_readable"] is False
    cert1 = x509.load_pem_x509_certificate((state / "cert.pem").read_bytes())
    assert spki(cert1.public_key()).hex() == keys[label1]["pub"]
    no_key_files(state)

    p = agent(fleet, token_env, state, "renew", "--force", "--json")
    assert p.returncode == 0, p.stderr + p.stdout
    st2 = json.loads(p.stdout)
    label2 = st2["token_key_label"]
    assert st2["serial"] != st["serial"] and label2 != label1 and not st2["renewal_in_flight"]
    # the server authenticated the renewal by the device's current (token-key) certificate
    last = fleet.service.certificates("tok-agent-1")[-1]
    assert last["issued_via"] == "est-reenroll" and last["replaces"] == st["serial"]
    assert fleet.service.key_state("tok-agent-1")["rotations"] == 1
    # the new certificate carries a fresh on-token key; the rotated-out key is gone
    keys = token_keys(token_env)
    assert set(keys) == {label2}
    assert keys[label2]["sensitive"] is True and keys[label2]["extractable"] is False
    cert2 = x509.load_pem_x509_certificate((state / "cert.pem").read_bytes())
    assert spki(cert2.public_key()).hex() == keys[label2]["pub"]
    no_key_files(state)

    # a renewal that fails after the new key was made keeps the current identity; the
    # next renewal deletes the orphaned key and rotates as usual
    raw = json.loads((state / "agent.json").read_text())
    server = raw["config"]["server"]
    raw["config"]["server"] = "https://localhost:1"
    (state / "agent.json").write_text(json.dumps(raw))
    p = agent(fleet, token_env, state, "renew", "--force")
    assert p.returncode == 75, p.stdout + p.stderr
    assert (state / "cert.pem").read_bytes() == cert2.public_bytes(serialization.Encoding.PEM)
    p = agent(fleet, token_env, state, "status", "--json")
    st3 = json.loads(p.stdout)
    assert st3["renewal_in_flight"] and st3["token_key_label"] == label2
    assert len(token_keys(token_env)) == 2  # current + the orphaned pending key
    raw = json.loads((state / "agent.json").read_text())
    raw["config"]["server"] = server
    (state / "agent.json").write_text(json.dumps(raw))
    p = agent(fleet, token_env, state, "renew", "--force", "--json")
    assert p.returncode == 0, p.stderr + p.stdout
    st4 = json.loads(p.stdout)
    assert not st4["renewal_in_flight"]
    assert set(token_keys(token_env)) == {st4["token_key_label"]}
    assert st4["token_key_label"] not in (label1, label2)
    no_key_files(state)


def test_tpm_agent_enrols_with_the_key_generated_in_the_tpm(fleet, tmp_path: Path) -> None:
    """The agent's token backend with a TPM 2.0 (swtpm through tpm2-pkcs11): the key is
    generated in the TPM and never leaves it, and the CSR is signed there. (Renewal over
    mTLS needs a TPM resource manager in this set-up: swtpm without one has three
    object slots, and the renewal holds the current key, the new one and tpm2-pkcs11's
    own objects at once; see docs/identity.md, Limits.)"""
    with tpm2_pkcs11_token(tmp_path, "fwtpm", PIN) as tpm_env:
        env = {**tpm_env, "FLEETWARDEN_PKCS11_PIN": PIN}
        state = tmp_path / "agent"
        st = enrol(fleet, env, state, "tpm-agent-1", module=TPM2_PKCS11, token="fwtpm")
        assert st["enrolled"] and st["key_backend"] == "pkcs11"
        label = st["token_key_label"]
        keys = token_keys(env, TPM2_PKCS11, "fwtpm")
        assert set(keys) == {label}
        assert keys[label]["sensitive"] is True and keys[label]["extractable"] is False
        assert keys[label]["value_readable"] is False
        cert = x509.load_pem_x509_certificate((state / "cert.pem").read_bytes())
        assert spki(cert.public_key()).hex() == keys[label]["pub"]
        assert fleet.service.certificates("tpm-agent-1")[-1]["issued_via"] == "est-token"
        no_key_files(state)


@pytest.fixture
def enrolled(fleet, token_env: dict[str, str], tmp_path: Path, request) -> Path:
    state = tmp_path / "agent"
    enrol(fleet, token_env, state, f"tok-{request.node.name[-28:]}".replace("_", "-"))
    return state


def _edit(state: Path, **config: Any) -> None:
    raw = json.loads((state / "agent.json").read_text())
    raw["config"].update(config)
    (state / "agent.json").write_text(json.dumps(raw))


def _refused(fleet, env: dict[str, str], state: Path, *needles: str) -> str:
    before = {f: (state / f).read_bytes() for f in ("cert.pem", "agent.json")}
    keys_before = set(token_keys(env))
    p = agent(fleet, env, state, "renew", "--force")
    out = p.stdout + p.stderr
    assert p.returncode == 75, out
    for n in needles:
        assert n in out, out
    assert PIN not in out
    # nothing changed: same certificate, same state, same keys on the token
    assert {f: (state / f).read_bytes() for f in before} == before
    assert set(token_keys(env)) == keys_before
    no_key_files(state)
    return out


def test_wrong_pin(fleet, token_env, enrolled: Path) -> None:
    env = {**token_env, "FLEETWARDEN_PKCS11_PIN": "11111"}
    out = _refused(fleet, env, enrolled, "cannot open PKCS#11 token 'fwagent'", "(wrong PIN)")
    assert "11111" not in out


def test_unknown_token(fleet, token_env, enrolled: Path) -> None:
    _edit(enrolled, pkcs11_token_label="no-such-token")
    _refused(fleet, token_env, enrolled, "PKCS#11 token 'no-such-token'", "(no such token)")


def test_unknown_key_label(fleet, token_env, enrolled: Path) -> None:
    raw = json.loads((enrolled / "agent.json").read_text())
    raw["token_keys"]["current"] = "gone-key"
    (enrolled / "agent.json").write_text(json.dumps(raw))
    _refused(fleet, token_env, enrolled, "no key labelled 'gone-key' on the token")


def test_engine_not_installed(fleet, token_env, enrolled: Path) -> None:
    _edit(enrolled, pkcs11_engine="nosuchengine")
    _refused(fleet, token_env, enrolled, "engine 'nosuchengine' is not installed")
    _edit(enrolled, pkcs11_engine="/nonexistent/pkcs11.so")
    _refused(fleet, token_env, enrolled, "is not installed (no pkcs11.so in /nonexistent/pkcs11.so")


def test_bad_module_path(fleet, token_env, enrolled: Path) -> None:
    _edit(enrolled, pkcs11_module="/nonexistent/libp11-module.so")
    _refused(fleet, token_env, enrolled, "via /nonexistent/libp11-module.so")


def test_certificate_not_matching_the_token_key(fleet, token_env, enrolled: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    device_id = json.loads((enrolled / "agent.json").read_text())["config"]["device_id"]
    wrong = fleet.service.ca.issue_device(device_id, other.public_key())
    (enrolled / "cert.pem").write_bytes(wrong.public_bytes(serialization.Encoding.PEM))
    _refused(fleet, token_env, enrolled, "does not match the token key")


def test_token_config_is_validated(fleet, token_env, tmp_path: Path) -> None:
    for backend, reason in (
        ("pkcs11", "needs a token label"),
        ("vault", "key backend must be one of"),
    ):
        p = agent(
            fleet,
            token_env,
            tmp_path / backend,
            "enroll",
            "--server",
            fleet.base,
            "--device-id",
            "x",
            "--ca-file",
            str(fleet.paths.root_cert),
            "--token",
            "t",
            "--key-backend",
            backend,
        )
        assert p.returncode != 0 and reason in p.stdout + p.stderr
