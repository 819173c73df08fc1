"""The generated Mosquitto configuration (C2 mutual TLS, M3 no plaintext exposure).

Invariants of :func:`render_config`:
- the device listener is TLS only, ``require_certificate true`` against the fleet CA
  chain, TLS 1.2 minimum, ECDHE + AEAD suites only;
- the only plaintext listener is bound to 127.0.0.1 and admits nothing but the platform
  user with its random password (checked by the plugin);
- ``allow_anonymous false``; authentication and every ACL decision go through the
  fleetwarden plugin, which sets the username from the certificate CN (Mosquitto's own
  ``use_identity_as_username`` would bypass plugins entirely, so the plugin does it);
- the file holds the platform password and is written 0600.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from fleetwarden.gateway.config import GatewaySettings


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    conf: Path
    plugin: Path
    policy: Path
    revoked: Path
    ca: Path
    cert: Path
    key: Path


def _q(path: Path) -> str:
    text = str(path)
    if any(c in text for c in "\n\r"):
        raise ValueError(f"unusable path {text!r}")
    return text


def render_config(
    gs: GatewaySettings,
    files: BrokerFiles,
    *,
    platform_port: int,
    platform_password: str,
) -> str:
    lines = [
        "# fleetwarden managed broker (generated; edits are overwritten)",
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "set_tcp_nodelay true",
        f"max_packet_size {gs.max_packet_size}",
        "max_inflight_messages 100",
        f"max_queued_messages {gs.max_queued_messages}",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp false",
        # Keep the process identity we were started with: dropping to the "mosquitto"
        # user would make the 0600 files below unreadable.
        f"user {getpass.getuser()}",
        "",
        f"plugin {_q(files.plugin)}",
        f"plugin_opt_policy_file {_q(files.policy)}",
        f"plugin_opt_revoked_file {_q(files.revoked)}",
        f"plugin_opt_platform_password {platform_password}",
        f"plugin_opt_source_policy {gs.source_policy}",
        f"plugin_opt_unknown_devices {gs.unknown_devices}",
        f"plugin_opt_metrics_interval_ms {gs.metrics_flush_ms}",
        f"plugin_opt_max_connects_per_addr {gs.max_connects_per_addr}",
        "",
        f"listener {gs.port} {gs.host}",
        f"max_connections {gs.max_connections}",
        f"cafile {_q(files.ca)}",
        f"certfile {_q(files.cert)}",
        f"keyfile {_q(files.key)}",
        "require_certificate true",
        "tls_version tlsv1.2",
        f"ciphers {gs.tls_ciphers}",
        "",
        # Platform services only: loopback, authenticated by the plugin.
        f"listener {platform_port} 127.0.0.1",
        "max_connections 64",
        "",
    ]
    return "\n".join(lines)
