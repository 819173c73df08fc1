"""Typed settings, read from ``<data-dir>/fleetwarden.toml`` and ``FLEETWARDEN_*``.

Precedence, highest first: explicit arguments (CLI flags), environment variables,
the TOML file in the data directory, defaults. The data directory itself comes from
``--data-dir``, then ``FLEETWARDEN_DATA_DIR``, then ``./fleetwarden-data``; every command
resolves it the same way through :func:`load_settings`.

Secrets never live in this object's ``repr``: URLs are rendered with passwords hidden.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleetwarden.auditlog.config import AuditLogSettings
from fleetwarden.detect.config import DetectSettings
from fleetwarden.errors import ConfigError
from fleetwarden.firmware.config import FirmwareSettings
from fleetwarden.gateway.config import GatewaySettings
from fleetwarden.identity.config import IdentitySettings

CONFIG_FILE = "fleetwarden.toml"
DEFAULT_DATA_DIR = Path("fleetwarden-data")


class Settings(BaseSettings):
    """Every tunable of a fleetwarden installation."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETWARDEN_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite (WAL) in the data directory",
    )
    event_bus_url: str = Field(
        default="memory://", description="memory:// (in-process) or nats://host:port"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8443, ge=1, le=65535)
    max_request_bytes: int = Field(default=1 << 20, ge=1024, description="API body limit")
    max_import_bytes: int = Field(
        default=512 << 20, ge=1024, description="body limit for bulk import over the API"
    )
    import_batch_size: int = Field(default=5000, ge=1, le=100_000)
    log_level: str = "info"
    auditlog: AuditLogSettings = Field(default_factory=AuditLogSettings)
    detect: DetectSettings = Field(default_factory=DetectSettings)
    firmware: FirmwareSettings = Field(default_factory=FirmwareSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be debug, info, warning or error")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _CURRENT_TOML.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None and toml_path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleetwarden.db').resolve()}"


# pydantic-settings builds sources from the class; the TOML path depends on the data
# directory chosen at run time, so it is handed over through this one-slot holder.
_CURRENT_TOML: dict[str, Path | None] = {"path": None}


def resolve_data_dir(explicit: Path | str | None = None) -> Path:
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    env = os.environ.get("FLEETWARDEN_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


def load_settings(data_dir: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings for a data directory (see module docstring for precedence)."""
    ddir = resolve_data_dir(data_dir)
    toml_path = ddir / CONFIG_FILE
    if toml_path.exists():
        try:
            with toml_path.open("rb") as fh:
                content = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {toml_path}: {exc}") from exc
        if "data_dir" in content:
            raise ConfigError(f"{toml_path}: data_dir cannot be set inside the data directory")
    _CURRENT_TOML["path"] = toml_path
    try:
        return Settings(data_dir=ddir, **overrides)
    except ValueError as exc:
        raise ConfigError(f"invalid settings ({toml_path} or FLEETWARDEN_*): {exc}") from exc
    finally:
        _CURRENT_TOML["path"] = None
