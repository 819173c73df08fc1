"""The Python device agent (paho-mqtt) with its key in a PKCS#11 token (SoftHSM2): the
key is generated on the token (sensitive, never extractable), the handshake is signed
there through the OpenSSL pkcs11 engine (fleetwarden.identity.tlskey), the broker
attributes the telemetry to the device, reconnects back off, and a live revocation
still kicks it. The agent runs in its own process (see token_agent.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from gw_harness import Harness, needs_broker

from fleetwarden.events import EventClass, Status, device_config_change

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
PIN = "2468"
HERE = Path(__file__).parent

pytestmark = [pytest.mark.interop, needs_broker]

KEYGEN = """
import json, sys
from pathlib import Path
from fleetwarden.identity.keys import Pkcs11Key
from cryptography.hazmat.primitives import serialization
k = Pkcs11Key.generate(Path(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), sys.argv[4], "ec-p256")
der = k.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
print(json.dumps({"pub": der.hex(), "sensitive": k.attribute("SENSITIVE"),
                  "extractable": k.attribute("EXTRACTABLE")}))
"""


def _token(tmp_path: Path) -> dict[str, str]:
    if not (Path(MODULE).exists() and ENGINE.exists()):
        pytest.fail("needs softhsm2 and libengine-pkcs11-openssl (.ci/apt/gateway.txt)")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "FLEETWARDEN_PKCS11_PIN": PIN}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "gwdev"]
        + ["--pin", PIN, "--so-pin", "13579"],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return env


def _keygen(env: dict[str, str], label: str) -> ec.EllipticCurvePublicKey:
    p = subprocess.run(
        [sys.executable, "-c", KEYGEN, MODULE, "gwdev", PIN, label],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["sensitive"] is True and out["extractable"] is False
    pub = load_der_public_key(bytes.fromhex(out["pub"]))
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    return pub


class TokenAgent:
    def __init__(self, env: dict[str, str], **cfg: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "token_agent.py"), json.dumps(cfg, default=str)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first = self._line()

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "agent died"
        return dict(json.loads(line))

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._line()

    def wait(self, pred: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.ask("status")
            if pred(st) or time.monotonic() > deadline:
                return st
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError, BrokenPipeError):
                self.ask("stop")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_token_key_agent_publishes_reconnects_and_is_kicked(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    env = _token(tmp_path)
    pub = _keygen(env, "gw-tok-1")
    h.add_device("gw-tok-1")
    issued = h.pki.device_for_public_key("gw-tok-1", pub)
    h.reload()
    assert issued.key is None and not issued.key_path.exists()
    agent = TokenAgent(
        env,
        device_id="gw-tok-1",
        port=h.port,
        ca_file=h.pki.chain_path,
        cert_file=issued.cert_path,
        module=MODULE,
        token_label="gwdev",
        key_label="gw-tok-1",
    )
    try:
        assert agent.first == {"started": True}, agent.first
        assert agent.wait(lambda s: s["connected"])["connected"]
        h.wait_for(lambda e: e.device_uid == "gw-tok-1" and "connected" in e.message)
        for _ in range(3):
            assert agent.ask("publish") == {"published": True}
        time.sleep(0.6)  # one plugin flush (200 ms in tests)
        # reconnect with backoff after the broker dies
        sup = h.gateway.supervisor
        assert sup is not None
        h.run(sup.kill())
        st = agent.wait(lambda s: s["connects"] >= 2 and s["connected"], timeout=30)
        assert st["connects"] >= 2 and st["connected"], st
        assert agent.ask("publish") == {"published": True}
        time.sleep(1.0)
        h.run(h.gateway.flush_metrics_now())
        recs = [
            e.data["unmapped"]["fleetwarden_metrics"]
            for e in h.events
            if e.class_uid == EventClass.NETWORK_ACTIVITY and e.device_uid == "gw-tok-1"
        ]
        assert sum(r["messages_sent"] for r in recs) == 4
        assert {t for r in recs for t in r["topics"]} == {"devices/gw-tok-1/telemetry"}
        # a live revocation kicks the token-key session, and reconnects are refused
        h.run(
            h.bus.publish(
                device_config_change(
                    device_uid="gw-tok-1",
                    message="certificate revoked",
                    changes={"certificate": {"status": "revoked", "serial": issued.serial_hex}},
                )
            )
        )
        assert not agent.wait(lambda s: not s["connected"], timeout=10)["connected"]

        def refused(e: Any) -> bool:
            gw = e.data.get("unmapped", {}).get("gateway", {})
            return (
                e.class_uid == EventClass.AUTHENTICATION
                and e.status_id == Status.FAILURE
                and e.device_uid == "gw-tok-1"
                and gw.get("reason") == "revoked"
            )

        h.wait_for(refused, timeout=15)
        assert not agent.ask("status")["connected"]
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"pin": "9999"}, "cannot log in to token 'gwdev' (wrong or missing PIN)"),
        ({"pin": ""}, "no PIN was given"),
        ({"token_label": "nope"}, "cannot load key 'gw-tok-2' on token 'nope'"),
        ({"key_label": "nope"}, "cannot load key 'nope' on token 'gwdev'"),
        ({"engine": "nosuchengine"}, "OpenSSL engine 'nosuchengine' is not installed"),
        ({"engine": "/nonexistent/engine.so"}, "is not installed (no engine.so in /nonexistent"),
        ({"module": "/nonexistent/module.so"}, "PKCS#11 module /nonexistent/module.so does not"),
        (
            {"module": "/usr/lib/x86_64-linux-gnu/libz.so.1"},
            "cannot load the PKCS#11 module /usr/lib/x86_64-linux-gnu/libz.so.1",
        ),
        ({"cert": "other"}, "does not match the token key 'gw-tok-2' on token 'gwdev'"),
    ],
)
def test_token_key_failures_are_clear_errors(
    pki: Any, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    """Each way the token key can be unusable stops the agent before any connection,
    with the reason; the PIN never appears."""
    env = _token(tmp_path)
    pub = _keygen(env, "gw-tok-2")
    issued = pki.device_for_public_key("gw-tok-2", pub)
    cert = issued.cert_path
    if change.get("cert") == "other":
        cert = pki.device("gw-tok-other").cert_path  # a certificate for another key
    if "pin" in change:
        env = {**env, "FLEETWARDEN_PKCS11_PIN": change["pin"]}
    agent = TokenAgent(
        env,
        device_id="gw-tok-2",
        port=1,
        ca_file=pki.chain_path,
        cert_file=cert,
        module=change.get("module", MODULE),
        token_label=change.get("token_label", "gwdev"),
        key_label=change.get("key_label", "gw-tok-2"),
        engine=change.get("engine", "pkcs11"),
    )
    try:
        err = agent.first.get("error", "")
        assert expected in err, agent.first
        assert PIN not in err and "9999" not in err
        assert agent.proc.wait(10) == 2
    finally:
        agent.close()
