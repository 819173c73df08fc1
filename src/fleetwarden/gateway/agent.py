"""Device side of the gateway: an mTLS MQTT session that publishes telemetry (C2).

:class:`TelemetryAgent` connects to the managed broker with the device certificate and
key, uses the certificate CN as its client id (the broker refuses anything else),
publishes under ``devices/<id>/telemetry`` only, and reconnects after any loss with
exponential backoff and full jitter (so a fleet does not reconnect in lockstep after a
broker restart).

Key backends: a PEM key file (``key_file``), or a key that stays in a PKCS#11 token
(``token_key``): paho-mqtt takes a plain ``ssl.SSLContext``, and
:func:`fleetwarden.identity.tlskey.use_token_key` makes that context sign the handshake
inside the token (OpenSSL pkcs11 engine). Exactly one of the two is configured.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from fleetwarden.gateway.errors import GatewayError
from fleetwarden.identity.tlskey import TokenKey, use_token_key


def backoff_delays(base: float, cap: float, rng: random.Random | None = None) -> Any:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**n))."""
    r = rng or random.Random()  # noqa: S311 - jitter, not a secret
    n = 0
    while True:
        yield r.uniform(0, min(cap, base * (2**n)))
        n = min(n + 1, 30)


@dataclass
class AgentConfig:
    device_id: str
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path | None = None
    token_key: TokenKey | None = None  # a key that stays in a PKCS#11 token
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    keepalive_s: int = 60
    bind_address: str = ""


class TelemetryAgent:
    """Keeps one mTLS session up and publishes telemetry on demand."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.connected = threading.Event()
        self.connects = 0
        self.refusals: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.device_id, protocol=mqtt.MQTTv311
        )
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if (cfg.key_file is None) == (cfg.token_key is None):
            raise GatewayError("the device agent needs exactly one of key_file and token_key")
        if cfg.token_key is not None:
            use_token_key(ctx, cfg.cert_file, cfg.token_key)
        else:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
        self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    @property
    def topic(self) -> str:
        return f"devices/{self.cfg.device_id}/telemetry"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self.refusals.append(str(rc))
        else:
            self.connects += 1
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.connected.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fw-agent", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # paho's own reconnect has no jitter; this loop owns reconnection instead.
        delays = backoff_delays(self.cfg.backoff_base_s, self.cfg.backoff_cap_s)
        while not self._stop.is_set():
            try:
                self.client.connect(
                    self.cfg.host,
                    self.cfg.port,
                    keepalive=self.cfg.keepalive_s,
                    bind_address=self.cfg.bind_address,
                )
                rc = mqtt.MQTT_ERR_SUCCESS
                while not self._stop.is_set() and rc == mqtt.MQTT_ERR_SUCCESS:
                    rc = self.client.loop(timeout=0.5)
            except (OSError, ssl.SSLError):
                pass
            self.connected.clear()
            if self.connects and self._stop.is_set():
                break
            if self.connected.is_set():
                delays = backoff_delays(self.cfg.backoff_base_s, self.cfg.backoff_cap_s)
            self._stop.wait(next(delays))
        self.client.disconnect()

    def publish(self, values: dict[str, Any]) -> bool:
        if not self.connected.is_set():
            return False
        payload = json.dumps({"ts": time.time(), **values}, separators=(",", ":"))
        info = self.client.publish(self.topic, payload.encode(), qos=0)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
