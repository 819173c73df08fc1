"""Audit log settings: ``[auditlog]`` in fleetwarden.toml, ``FLEETWARDEN_AUDITLOG__*``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator


class AuditLogSettings(BaseModel):
    """Where the log lives, how it is checkpointed and where checkpoints are published."""

    enabled: bool = True
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the log; default SQLite file auditlog.db in the data dir",
    )
    origin: str | None = Field(
        default=None,
        description="checkpoint origin line (log identity); default fleetwarden/<host>/audit",
    )
    key_name: str = Field(default="fleetwarden-audit", description="signed-note key name")
    key_file: Path = Field(default=Path("keys/auditlog-checkpoint.pem"))
    pkcs11_module: str | None = Field(default=None, description="PKCS#11 module path")
    pkcs11_token_label: str = "fleetwarden"  # noqa: S105 (a label, not a secret)
    pkcs11_key_label: str = "auditlog-checkpoint"
    pkcs11_pin_file: Path | None = None
    witness_key_file: Path | None = Field(
        default=None, description="second Ed25519 key that cosigns checkpoints (witness)"
    )
    witness_name: str = "fleetwarden-witness"
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="extra verifier keys (name+id+key) accepted on checkpoints (old keys)",
    )
    checkpoint_every: int = Field(default=1000, ge=1, description="entries between checkpoints")
    checkpoint_interval: float = Field(
        default=10.0, gt=0, description="seconds between checkpoints while the log grows"
    )
    batch_max: int = Field(default=5000, ge=1, le=100_000, description="group commit size")
    anchor_file: Path | None = Field(
        default=Path("auditlog-checkpoints.txt"),
        description="file every published checkpoint is appended to (relative: data dir)",
    )
    anchor_webhook: str | None = Field(default=None, description="URL checkpoints are POSTed to")
    anchor_syslog: str | None = Field(
        default=None, description="tcp://host:port, tls://host:port or udp://host:port"
    )
    anchor_syslog_ca: Path | None = None
    max_event_bytes: int = Field(default=64 * 1024, ge=1024, le=256 * 1024)

    @field_validator("anchor_webhook")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("anchor_webhook must be an http(s) URL")
        return v

    @field_validator("anchor_syslog")
    @classmethod
    def _syslog(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("tcp://", "tls://", "udp://")):
            raise ValueError("anchor_syslog must be tcp://, tls:// or udp://host:port")
        return v

    def url(self, data_dir: Path) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(data_dir / 'auditlog.db').resolve()}"

    def path(self, data_dir: Path, p: Path) -> Path:
        return p if p.is_absolute() else data_dir / p
