"""Settings of the firmware control (``[firmware]`` in fleetwarden.toml,
``FLEETWARDEN_FIRMWARE__*`` in the environment)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FirmwareSettings(BaseModel):
    max_image_bytes: int = Field(
        default=1 << 30, ge=1024, description="largest image accepted by publish and upload"
    )
    timestamp_expiry_seconds: int = Field(
        default=24 * 3600, ge=60, description="TUF timestamp lifetime (online key)"
    )
    snapshot_expiry_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="TUF snapshot lifetime (online key)"
    )
    targets_expiry_seconds: int = Field(
        default=365 * 24 * 3600, ge=3600, description="TUF targets and delegated roles lifetime"
    )
    root_expiry_seconds: int = Field(default=365 * 24 * 3600, ge=3600)
    refresh_interval_seconds: float = Field(
        default=60.0, gt=0, description="how often `up` checks the online roles' expiry"
    )
    ddi_polling_interval: str = Field(
        default="00:05:00", pattern=r"^\d\d:\d\d:\d\d$", description="hawkBit sleep (HH:MM:SS)"
    )
    ddi_tenant: str = Field(default="DEFAULT", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
