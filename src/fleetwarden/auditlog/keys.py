"""Checkpoint signing keys: an Ed25519 key file (0600) or a key inside a PKCS#11 token.

The key file is PKCS#8 PEM, created on first use with ``write_secret`` (0600, atomic)
and refused when group/other can read it. With PKCS#11 (python-pkcs11; tested against
SoftHSM2) the private key never leaves the token: we ask it for CKM_EDDSA signatures and
read the public key from its CKA_EC_POINT. The PIN comes from a file or the environment,
never from the settings file, and is never logged.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetwarden._internal.files import ensure_private_dir, write_secret
from fleetwarden.auditlog.errors import SigningKeyError
from fleetwarden.auditlog.note import Ed25519Signer, Signer

#: DER of the OID 1.3.101.112 (Ed25519), the CKA_EC_PARAMS of an Ed25519 token key
ED25519_EC_PARAMS = bytes.fromhex("06032b6570")


def load_or_create_file_key(path: Path, name: str, *, create: bool = True) -> Ed25519Signer:
    if not path.exists():
        if not create:
            raise SigningKeyError(f"signing key {path} does not exist")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        ensure_private_dir(path.parent)
        write_secret(path, pem)
        return Ed25519Signer(name, key)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"signing key {path} is readable by others (chmod 600 it)")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"cannot load signing key {path}: {type(exc).__name__}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is not an Ed25519 key")
    return Ed25519Signer(name, loaded)


def _der_octet_string(value: bytes) -> bytes:
    """Unwrap a DER OCTET STRING (CKA_EC_POINT is one); accept a raw 32-byte key too."""
    if len(value) == 32:
        return value
    if len(value) == 34 and value[0] == 0x04 and value[1] == 32:
        return value[2:]
    raise SigningKeyError("token public key is not a 32-byte Ed25519 point")


@dataclass
class Pkcs11Signer:
    """Ed25519 signing by a PKCS#11 token; one session per signature (checkpoints are
    rare, and a long-lived session would not survive a token restart)."""

    name: str
    module: str
    token_label: str
    key_label: str
    pin: str = field(repr=False)  # never in a repr, a log line or a traceback

    def __post_init__(self) -> None:
        self._public: bytes | None = None

    def _session(self) -> Any:
        try:
            import pkcs11
        except ImportError as exc:  # pragma: no cover - dependency is declared
            raise SigningKeyError("python-pkcs11 is not installed") from exc
        try:
            lib = pkcs11.lib(self.module)
            token = lib.get_token(token_label=self.token_label)
            return token.open(user_pin=self.pin)
        except Exception as exc:  # PKCS11Error and OS errors from the module
            raise SigningKeyError(
                f"cannot open PKCS#11 token {self.token_label!r}: {type(exc).__name__}"
            ) from exc

    def public_key(self) -> bytes:
        if self._public is None:
            import pkcs11
            from pkcs11 import Attribute, ObjectClass

            with self._session() as session:
                try:
                    pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=self.key_label)
                    self._public = _der_octet_string(bytes(pub[Attribute.EC_POINT]))
                except pkcs11.PKCS11Error as exc:
                    raise SigningKeyError(
                        f"no Ed25519 public key {self.key_label!r} in the token"
                    ) from exc
        return self._public

    def sign(self, message: bytes) -> bytes:
        import pkcs11
        from pkcs11 import Mechanism, ObjectClass

        with self._session() as session:
            try:
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=self.key_label)
                return bytes(key.sign(message, mechanism=Mechanism.EDDSA))
            except pkcs11.PKCS11Error as exc:
                raise SigningKeyError(
                    f"token refused to sign with {self.key_label!r}: {type(exc).__name__}"
                ) from exc


def generate_token_key(module: str, token_label: str, key_label: str, pin: str) -> None:
    """Create an Ed25519 key pair in a token (used by tests and `log key --pkcs11`)."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism

    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=token_label)
    with token.open(user_pin=pin, rw=True) as session:
        session.generate_keypair(
            KeyType.EC_EDWARDS,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            store=True,
            label=key_label,
            public_template={Attribute.EC_PARAMS: ED25519_EC_PARAMS},
        )


def read_pin(pin_file: Path | None, env: str = "FLEETWARDEN_AUDITLOG_PKCS11_PIN") -> str:
    if pin_file is not None:
        try:
            return pin_file.read_text().strip()
        except OSError as exc:
            raise SigningKeyError(f"cannot read PKCS#11 PIN file {pin_file}") from exc
    pin = os.environ.get(env)
    if not pin:
        raise SigningKeyError(f"PKCS#11 needs a PIN: set auditlog.pkcs11_pin_file or {env}")
    return pin


def make_signer(settings: Any, data_dir: Path, *, create: bool = True) -> Signer:
    """The log's checkpoint signer from :class:`AuditLogSettings`."""
    cfg = settings
    if cfg.pkcs11_module:
        return Pkcs11Signer(
            name=cfg.key_name,
            module=cfg.pkcs11_module,
            token_label=cfg.pkcs11_token_label,
            key_label=cfg.pkcs11_key_label,
            pin=read_pin(cfg.pkcs11_pin_file),
        )
    path = cfg.key_file if cfg.key_file.is_absolute() else data_dir / cfg.key_file
    return load_or_create_file_key(path, cfg.key_name, create=create)


def make_witness(settings: Any, data_dir: Path, *, create: bool = True) -> Signer | None:
    cfg = settings
    if cfg.witness_key_file is None:
        return None
    path = (
        cfg.witness_key_file
        if cfg.witness_key_file.is_absolute()
        else data_dir / cfg.witness_key_file
    )
    return load_or_create_file_key(path, cfg.witness_name, create=create)
