"""The Python device agent (paho-mqtt) with its key in a PKCS#11 token (SoftHSM2): the
key is generated on the token (sensitive, never extractable), the handshake is signed
there through the OpenSSL pkcs11 engine (fleetwarden.identity.tlskey), the broker
attributes the telemetry to the device, reconnects back off, and a live revocation
still kicks it. The agent runs in its own process (see token_agent.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


TPM_MODULE = Path("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so")


def _free_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def tpm_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A TPM 2.0 (swtpm) exposed as a PKCS#11 token by tpm2-pkcs11."""
    if not (TPM_MODULE.exists() and shutil.which("swtpm") and shutil.which("pkcs11-tool")):
        pytest.fail("needs swtpm, libtpm2-pkcs11-1 and opensc (.ci/apt/gateway.txt)")
    (tmp_path / "tpm").mkdir()
    (tmp_path / "store").mkdir()
    port = _free_pair()
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp_path / 'tpm'}"]
        + ["--server", f"type=tcp,port={port},bindaddr=127.0.0.1"]
        + ["--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"]
        + ["--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield {
            **os.environ,
            "TPM2_PKCS11_STORE": str(tmp_path / "store"),
            "TPM2_PKCS11_TCTI": f"swtpm:host=127.0.0.1,port={port}",
            "FLEETWARDEN_PKCS11_PIN": PIN,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def test_tpm_key_through_tpm2_pkcs11_connects(
    harness: Harness, tpm_env: dict[str, str], tmp_path: Path
) -> None:
    """The same path with the key inside a TPM: tpm2-pkcs11 makes the TPM a PKCS#11
    token, the key pair is created in the TPM (OpenSC pkcs11-tool), and the handshake
    is signed there."""
    h = harness

    def tool(*a: str) -> str:
        p = subprocess.run(
            ["pkcs11-tool", "--module", str(TPM_MODULE), *a],
            env=tpm_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    tool("--init-token", "--label", "tpmdev", "--so-pin", "86420")
    tool("--token-label", "tpmdev", "--login", "--login-type", "so", "--so-pin", "86420",
         "--init-pin", "--pin", PIN)  # fmt: skip
    tool("--token-label", "tpmdev", "--login", "--pin", PIN, "--keypairgen",
         "--key-type", "EC:prime256v1", "--label", "gw-tpm-1", "--id", "01")  # fmt: skip
    listing = tool("--token-label", "tpmdev", "--login", "--pin", PIN, "--list-objects",
                   "--type", "privkey")  # fmt: skip
    assert "sensitive, always sensitive, never extractable" in listing, listing
    tool("--token-label", "tpmdev", "--read-object", "--type", "pubkey", "--id", "01",
         "-o", str(tmp_path / "pub.der"))  # fmt: skip
    pub = load_der_public_key((tmp_path / "pub.der").read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    h.add_device("gw-tpm-1")
    issued = h.pki.device_for_public_key("gw-tpm-1", pub)
    h.reload()
    agent = TokenAgent(
        tpm_env,
        device_id="gw-tpm-1",
        port=h.port,
        ca_file=h.pki.chain_path,
        cert_file=issued.cert_path,
        module=TPM_MODULE,
        token_label="tpmdev",
        key_label="gw-tpm-1",
    )
    try:
        assert agent.first == {"started": True}, agent.first
        assert agent.wait(lambda s: s["connected"])["connected"]
        assert agent.ask("publish") == {"published": True}
        time.sleep(0.6)
        h.run(h.gateway.flush_metrics_now())
        recs = [
            e.data["unmapped"]["fleetwarden_metrics"]
            for e in h.events
            if e.class_uid == EventClass.NETWORK_ACTIVITY and e.device_uid == "gw-tpm-1"
        ]
        assert sum(r["messages_sent"] for r in recs) == 1
    finally:
        agent.close()
