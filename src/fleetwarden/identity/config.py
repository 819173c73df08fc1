"""Settings of the identity control (C1, C5): CA key storage, profiles, EST, CRL.

One nested model, ``Settings.identity``; environment variables use
``FLEETWARDEN_IDENTITY__<NAME>``. Secrets (CA passphrase, PKCS#11 PIN) are never
values here: only the *name* of the environment variable or the path of the file
that holds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

KEY_TYPES = ("ec-p256", "ec-p384", "ed25519", "rsa")


class IdentitySettings(BaseModel):
    """Identity settings (``[identity]`` in fleetwarden.toml)."""

    key_backend: Literal["file", "pkcs11", "tpm"] = Field(
        default="file",
        description="where CA keys live: encrypted PKCS#8 files, a PKCS#11 token or a TPM 2.0",
    )
    passphrase_env: str = Field(
        default="FLEETWARDEN_CA_PASSPHRASE",
        description="environment variable holding the CA key passphrase",
    )
    passphrase_file: Path | None = Field(
        default=None,
        description="file holding the CA key passphrase (default <data>/identity/ca.pass, "
        "created by `ca init` when the environment variable is unset)",
    )
    pkcs11_module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    pkcs11_token_label: str = "fleetwarden"  # noqa: S105 (a label, not a secret)
    pkcs11_pin_env: str = "FLEETWARDEN_PKCS11_PIN"
    pkcs11_pin_file: Path | None = None
    tpm_tcti: str = Field(
        default="device:/dev/tpmrm0", description="TCTI of the TPM 2.0, e.g. swtpm:port=2321"
    )

    ca_name: str = Field(default="fleetwarden", max_length=64)
    root_lifetime_days: int = Field(default=3650 * 2, ge=30)
    issuing_lifetime_days: int = Field(default=3650, ge=30)
    issuing_key_type: Literal["ec-p256", "ec-p384"] = "ec-p256"

    device_lifetime_days: int = Field(default=30, ge=1, le=3650)
    renew_fraction: float = Field(
        default=2 / 3, gt=0.1, lt=1.0, description="renew at this fraction of the lifetime"
    )
    allowed_key_types: list[str] = Field(default_factory=lambda: ["ec-p256"])
    min_rsa_bits: int = Field(default=2048, ge=2048)
    require_fresh_key: bool = Field(
        default=True, description="re-enrolment must use a key never certified before"
    )
    manual_approval: bool = Field(
        default=False, description="enrolment waits for `fleetwarden ca approve` (EST 202)"
    )
    retry_after_seconds: int = Field(default=60, ge=1, le=86400)
    token_ttl_hours: float = Field(default=72.0, gt=0, le=24 * 90)
    manufacturer_ca_file: Path | None = Field(
        default=None, description="PEM bundle of manufacturer CAs whose factory certs bootstrap"
    )
    est_max_body_bytes: int = Field(default=16384, ge=1024, le=1 << 20)

    server_names: list[str] = Field(
        default_factory=lambda: ["localhost"], description="DNS names of the platform's TLS cert"
    )
    server_lifetime_days: int = Field(default=90, ge=1, le=825)

    crl_host: str = "127.0.0.1"
    crl_port: int = Field(default=8080, ge=0, le=65535)
    crl_public_url: str | None = Field(
        default=None, description="CRL distribution point; default http://<crl_host>:<crl_port>"
    )
    crl_validity_hours: float = Field(default=24.0, gt=0.01, le=24 * 30)
    root_crl_days: int = Field(
        default=365,
        ge=1,
        le=3650,
        description="validity of the root's CRL (ARL), signed at `ca init`, `ca rollover` and "
        "`ca root-crl`: the offline root must come back before it runs out",
    )
    crl_refresh_fraction: float = Field(
        default=0.5, gt=0.05, lt=0.95, description="regenerate after this share of validity"
    )

    @field_validator("allowed_key_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in KEY_TYPES]
        if bad or not v:
            raise ValueError(f"allowed_key_types must be a non-empty subset of {KEY_TYPES}")
        return v

    def crl_url(self, name: str = "issuing") -> str:
        """The CRL distribution point of an issuing CA (``issuing`` = generation 1,
        ``issuing-<g>`` after rollovers)."""
        base = self.crl_public_url or f"http://{self.crl_host}:{self.crl_port}"
        return base.rstrip("/") + f"/crl/{name}.crl"
