"""Run Mosquitto as a child process and keep it running (restart with backoff).

Invariants: at most one broker process per :class:`BrokerSupervisor`; a crash is
restarted after an exponentially growing, jittered delay (reset once the broker has
stayed up for a minute); ``stop()`` terminates the child and waits for it. The broker's
log is read line by line: lines go to the Python log at debug level, and the TLS
handshake failures (which happen before any plugin callback) are handed to
``on_tls_failure(address, reason)``, attributed to the source address of the preceding
"New connection" line (Mosquitto runs one thread, so that line precedes its failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fleetwarden.gateway.errors import BrokerMissingError, GatewayError

log = logging.getLogger(__name__)

_NEW_CONN = re.compile(r"^New connection from (\S+?):(\d+) on port (\d+)\.")
_CONN_FAIL = re.compile(
    r"^Client connection from (\S+) failed: (?:error:[0-9A-Fa-f]+:[^:]*:[^:]*:)?(.*)$"
)
_SSL_ERR = re.compile(r"^OpenSSL Error\[\d+\]: error:[0-9A-Fa-f]+:[^:]*:[^:]*:(.*)$")


def check_binary(path: Path) -> None:
    if not path.exists():
        raise BrokerMissingError(
            f"Mosquitto broker not found at {path}: install the Debian package 'mosquitto' "
            "(apt-get install mosquitto) or set gateway.mosquitto_bin"
        )


class BrokerSupervisor:
    def __init__(
        self,
        binary: Path,
        conf: Path,
        *,
        ready_port: int,
        backoff_max: float = 30.0,
        on_tls_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.binary = binary
        self.conf = conf
        self.ready_port = ready_port
        self.backoff_max = backoff_max
        self.on_tls_failure = on_tls_failure
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarting = False
        self._started = asyncio.Event()
        self._stdbuf = shutil.which("stdbuf")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self, timeout: float = 15.0) -> None:
        check_binary(self.binary)
        self._task = asyncio.create_task(self._run(), name="gateway-broker")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._task.done():
                self._task.result()
                raise GatewayError("broker supervisor exited at start")
            if self.pid is not None and await _port_open(self.ready_port):
                return
            await asyncio.sleep(0.05)
        raise GatewayError(f"Mosquitto did not open its listeners within {timeout:.0f} s")

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            began = time.monotonic()
            # Mosquitto's stdout is block-buffered on a pipe; stdbuf makes it line
            # buffered so TLS failures are reported as they happen.
            prefix = [self._stdbuf, "-oL"] if self._stdbuf else []
            self.proc = await asyncio.create_subprocess_exec(
                *prefix,
                str(self.binary),
                "-c",
                str(self.conf),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
            await self._read_log(self.proc)
            rc = await self.proc.wait()
            if self._stopping:
                return
            if self._restarting:  # asked for (restart()): at once, not a failure
                self._restarting = False
                continue
            self.restarts += 1
            if time.monotonic() - began > 60:
                delay = 0.5
            wait = min(self.backoff_max, delay) * random.uniform(0.8, 1.2)  # noqa: S311
            log.error("Mosquitto exited with status %s; restarting in %.1f s", rc, wait)
            await asyncio.sleep(wait)
            delay = min(self.backoff_max, delay * 2)

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        last_addr: str | None = None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            log.debug("mosquitto: %s", line)
            m = _NEW_CONN.match(line)
            if m:
                last_addr = m.group(1)
                continue
            m = _CONN_FAIL.match(line)
            if m and self.on_tls_failure is not None:
                try:
                    self.on_tls_failure(m.group(1), m.group(2).strip().rstrip("."))
                except Exception:
                    log.exception("TLS failure handler failed")
                continue
            m = _SSL_ERR.match(line)
            if m and self.on_tls_failure is not None:
                try:
                    self.on_tls_failure(last_addr or "unknown", m.group(1).strip())
                except Exception:
                    log.exception("TLS failure handler failed")

    async def restart(self, timeout: float = 15.0) -> None:
        """Stop the broker and start it again now (e.g. to re-read its CA file); returns
        once it listens again."""
        proc = self.proc
        if proc is None or proc.returncode is not None or self._stopping:
            return
        self._restarting = True
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not proc and self.pid is not None and await _port_open(self.ready_port):
                return
            await asyncio.sleep(0.05)
        raise GatewayError(f"Mosquitto did not come back within {timeout:.0f} s")

    async def kill(self) -> None:
        """Kill the broker abruptly (tests: the supervisor must restart it)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def _port_open(port: int) -> bool:
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=1)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return True
