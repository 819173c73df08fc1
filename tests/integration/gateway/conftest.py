from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwarden.gateway.testpki import Issued, ScratchPKI

sys.path.insert(0, str(Path(__file__).parent))
from harness import Harness  # noqa: E402

needs_broker = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or not Path("/usr/sbin/mosquitto").exists(),
    reason="needs Debian mosquitto and mosquitto-clients (.ci/apt/gateway.txt)",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ScratchPKI:
    return ScratchPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> ScratchPKI:
    return ScratchPKI(tmp_path_factory.mktemp("pki-other"), name="other")


@pytest.fixture
def harness(tmp_path: Path, pki: ScratchPKI, request: pytest.FixtureRequest) -> Iterator[Harness]:
    marker = request.node.get_closest_marker("gateway_settings")
    extra: dict[str, Any] = dict(marker.kwargs) if marker else {}
    h = Harness(tmp_path, pki, **extra)
    setup = request.node.get_closest_marker("gateway_setup")
    if setup:
        setup.args[0](h)
    h.start()
    try:
        yield h
    finally:
        h.stop()


class Device:
    """A paho-mqtt device session (MQTT 5, so refusals come back as reason codes)."""

    def __init__(
        self, h: Harness, cert: Issued, *, client_id: str | None = None, bind: str = ""
    ) -> None:
        self.cert = cert
        cid = client_id or cert.cert.subject.rfc4514_string().removeprefix("CN=")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.client.tls_set(
            ca_certs=str(h.pki.chain_path), certfile=str(cert.cert_path), keyfile=str(cert.key_path)
        )
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connect_rc: Any = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.suback: list[Any] = []
        self.puback: list[Any] = []

        def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
            self.connect_rc = rc
            if not rc.is_failure:
                self.connected.set()

        def on_disconnect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
            self.disconnected.set()
            self.connected.clear()

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.suback.extend(rcs)
        self.client.on_publish = lambda c, u, mid, rc, p: self.puback.append(rc)
        self.client.connect("127.0.0.1", h.port, keepalive=30, bind_address=bind)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gateway_settings(**kw): GatewaySettings overrides")
    config.addinivalue_line("markers", "gateway_setup(fn): registry setup before start")
