"""Gateway settings: one nested model, ``Settings.gateway`` (env ``FLEETWARDEN_GATEWAY__*``).

Certificate paths are inputs: the identity control writes the fleet CA chain, the CRL
and the broker's server certificate; the gateway only reads them. Relative paths are
resolved against the data directory.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

DEFAULT_REFUSED = ["revoked", "suspended", "decommissioned", "disabled", "retired", "lost"]


class GatewaySettings(BaseModel):
    """The managed MQTT broker and its device policy."""

    enabled: bool = True
    host: str = Field(default="0.0.0.0", description="address of the mTLS device listener")  # noqa: S104
    port: int = Field(default=8883, ge=1, le=65535)
    platform_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="loopback-only plaintext listener for platform services; 0 = pick a free port",
    )
    mosquitto_bin: Path = Path("/usr/sbin/mosquitto")
    ca_file: Path = Field(default=Path("gateway/ca-chain.pem"), description="fleet CA chain (PEM)")
    crl_file: Path | None = Field(
        default=None, description="CRL (DER or PEM) whose serials are refused; re-read on change"
    )
    cert_file: Path = Path("gateway/server.pem")
    key_file: Path = Path("gateway/server.key")
    max_packet_size: int = Field(default=256 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_queued_messages: int = Field(
        default=1000, ge=10, description="per-client queue before QoS0 messages are dropped"
    )
    max_connections: int = Field(default=50_000, ge=1)
    max_connects_per_addr: int = Field(
        default=300, ge=0, description="connection attempts per source address per 10 s; 0 = off"
    )
    source_policy: Literal["refuse", "quarantine"] = "refuse"
    unknown_devices: Literal["refuse", "allow"] = "refuse"
    quarantine_group: str | None = Field(
        default="quarantine",
        description="members may only use quarantine/<id>/... (matches [detect] quarantine_group)",
    )
    refused_statuses: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSED))
    metrics_window_s: float = Field(default=300.0, gt=0, description="per-device metric window")
    metrics_flush_ms: int = Field(default=1000, ge=50, le=60_000)
    policy_refresh_s: float = Field(default=10.0, gt=0)
    policy_min_interval_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="least time between two policy recompiles; a burst of registry "
        "changes is coalesced into one (revocations are not delayed by it)",
    )
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    tls_ciphers: str = (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    def path(self, data_dir: Path, p: Path) -> Path:
        return p if p.is_absolute() else data_dir / p
