"""Run the real gateway component (Mosquitto + plugin + monitor) in a background loop."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwarden.api import create_app
from fleetwarden.events import Event, InProcessBus
from fleetwarden.gateway import Gateway
from fleetwarden.gateway.testpki import Issued, ScratchPKI
from fleetwarden.registry import Registry, schemas
from fleetwarden.registry.service import Actor
from fleetwarden.service import Context, OutboxRelay
from fleetwarden.settings import load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Harness:
    def __init__(
        self, tmp: Path, pki: ScratchPKI, *, with_detect: bool = False, **gateway: Any
    ) -> None:
        self.with_detect = with_detect
        self.detect: Any = None
        self.tmp = tmp
        self.pki = pki
        self.server = pki.server("localhost")
        self.port = free_port()
        gw = {
            "host": "127.0.0.1",
            "port": self.port,
            "ca_file": str(pki.chain_path),
            "cert_file": str(self.server.cert_path),
            "key_file": str(self.server.key_path),
            "metrics_flush_ms": 200,
            "policy_refresh_s": 0.5,
            **gateway,
        }
        self.settings = load_settings(tmp / "data", gateway=gw)
        (tmp / "data").mkdir(exist_ok=True)
        self.registry = Registry.open(self.settings.effective_database_url)
        self.events: list[Event] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway()
        self.relay = OutboxRelay(interval=0.05)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Harness:
        async def _start() -> None:
            self.bus = InProcessBus()

            async def collect(e: Event) -> None:
                self.events.append(e)

            self.bus.subscribe("test-collector", collect)
            await self.bus.start()
            self.ctx = Context(
                settings=self.settings,
                registry=self.registry,
                bus=self.bus,
                app=create_app(self.settings, self.registry),
            )
            await self.relay.start(self.ctx)
            await self.gateway.start(self.ctx)
            if self.with_detect:  # the real detection control, as `up` runs it
                from fleetwarden.detect.service import DetectService

                self.detect = DetectService(self.settings.detect, self.settings.data_dir)
                await self.detect.start(self.ctx)

        self.run(_start())
        return self

    def stop(self) -> None:
        async def _stop() -> None:
            if self.detect is not None:
                await self.detect.stop()
            await self.gateway.stop()
            await self.relay.stop()
            await self.bus.close()

        try:
            self.run(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.registry.close()

    # ------------------------------------------------------------------ helpers
    def add_device(self, device_id: str, **fields: Any) -> Issued:
        self.registry.add_device(
            schemas.DeviceCreate(device_id=device_id, **fields), Actor("cli:test")
        )
        return self.pki.device(device_id)

    def add_group(self, name: str, members: list[str], **fields: Any) -> None:
        actor = Actor("cli:test")
        self.registry.create_group(schemas.GroupCreate(name=name, **fields), actor)
        for m in members:
            self.registry.set_membership(name, m, True, actor)

    def reload(self) -> None:
        self.run(self.gateway.reload_policy())

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 10) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(
            "event not seen; got: " + "\n".join(e.message for e in self.events[-30:])
        )

    def pub(
        self,
        cert: Issued | None,
        topic: str,
        *,
        client_id: str | None = None,
        message: str = "hello",
        bind: str | None = None,
        extra: tuple[str, ...] = (),
        cafile: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        args = [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--cafile",
            str(cafile or self.pki.chain_path),
            "-t",
            topic,
            "-m",
            message,
        ]
        if cert is not None:
            args += ["--cert", str(cert.cert_path), "--key", str(cert.key_path)]
            args += ["-i", client_id or cert.cert.subject.rfc4514_string().removeprefix("CN=")]
        elif client_id:
            args += ["-i", client_id]
        if bind:
            args += ["-A", bind]
        return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=20)


needs_broker = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or not Path("/usr/sbin/mosquitto").exists(),
    reason="needs Debian mosquitto and mosquitto-clients (.ci/apt/gateway.txt)",
)


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
