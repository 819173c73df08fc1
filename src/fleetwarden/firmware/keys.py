"""Firmware signing keys (control C6; C5 for rotating them).

A signer is anything with ``public_key()`` and ``sign(data) -> bytes`` (see
:class:`Signer`). Three backends exist:

- :class:`FileSigner`: a PKCS#8 PEM file, encrypted with a passphrase (``keygen``
  always encrypts; unencrypted imgtool keys are accepted but reported as such);
- :class:`Pkcs11Signer`: a key that never leaves a PKCS#11 token (SoftHSM2, an HSM);
- :class:`ExternalSigner`: a command that receives the message on stdin and writes the
  raw signature on stdout (a cloud KMS, a signing server, an air-gapped box).

Invariants:
- ``data`` handed to ``sign`` is the MCUboot *signed message*: the 32-byte SHA-256
  digest of the image's hashed region. Ed25519 signs it as the message (MCUboot's
  ``ED25519`` TLV); ECDSA P-256 treats it as a prehashed SHA-256 digest, which is what
  imgtool and MCUboot's ``ECDSASIG`` TLV do. ECDSA signatures are returned DER-encoded.
- every backend's signature is verified against its public key before it is used, so a
  misbehaving token or signer command can never produce an image that does not verify.
- a key is identified by its MCUboot key hash: SHA-256 of the DER SubjectPublicKeyInfo.

The identity control has its own key-backend interface; this one is deliberately small
so both can be unified behind one protocol later.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from fleetwarden._internal.files import write_secret
from fleetwarden.firmware.errors import SigningKeyError

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
Algorithm = Literal["ecdsa-p256", "ed25519"]

#: largest key or signature file we read
MAX_KEY_FILE = 64 * 1024
PASSPHRASE_ENV = "FLEETWARDEN_FIRMWARE_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
PKCS11_PIN_ENV = "FLEETWARDEN_FIRMWARE_PKCS11_PIN"
PKCS11_MODULE_ENV = "FLEETWARDEN_FIRMWARE_PKCS11_MODULE"
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@runtime_checkable
class Signer(Protocol):
    """A signing key, wherever it lives."""

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


def algorithm_of(key: PublicKey) -> Algorithm:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise SigningKeyError("only ECDSA P-256 and Ed25519 keys are supported")


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_hash(key: PublicKey) -> bytes:
    """MCUboot's KEYHASH TLV value: SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der(key)).digest()


def key_id(key: PublicKey) -> str:
    return key_hash(key).hex()


def verify_signature(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Check a signature over the MCUboot signed message (see module docstring)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if len(signature) != 64:
                return False
            key.verify(signature, data)
        else:
            if len(data) != 32:
                return False
            key.verify(_strip_der_padding(signature), data, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return False
    return True


def _strip_der_padding(sig: bytes) -> bytes:
    # imgtool may pad ECDSA DER signatures with zero bytes to a fixed length (pad_sig);
    # the DER SEQUENCE length byte says where the real signature ends.
    if len(sig) >= 2 and sig[0] == 0x30 and sig[1] < 0x80:
        return sig[: sig[1] + 2]
    return sig


def load_public_key(data: bytes) -> PublicKey:
    """Parse a PEM or DER public key (SubjectPublicKeyInfo) or certificate."""
    if len(data) > MAX_KEY_FILE:
        raise SigningKeyError("public key file is too large")
    key: Any
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"-----BEGIN" in data:
            if b"PRIVATE KEY" in data:
                raise SigningKeyError("a private key was given where a public key is expected")
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except SigningKeyError:
        raise
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not a public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SigningKeyError("only ECDSA P-256 and Ed25519 public keys are supported")
    algorithm_of(key)
    return key


def read_public_key(path: Path) -> PublicKey:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from exc
    return load_public_key(data)


def _checked(signer: Signer, data: bytes, sig: bytes) -> bytes:
    if not verify_signature(signer.public_key(), sig, data):
        raise SigningKeyError("the signing backend returned a signature that does not verify")
    return sig


class FileSigner:
    """A private key in a PEM file (PKCS#8, normally passphrase-encrypted)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        algorithm_of(key.public_key())

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> FileSigner:
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > MAX_KEY_FILE:
            raise SigningKeyError(f"{path} is too large for a key file")
        encrypted = b"ENCRYPTED" in data
        if encrypted and passphrase is None:
            env = os.environ.get(PASSPHRASE_ENV)
            if env is None:
                raise SigningKeyError(
                    f"{path} is encrypted: set {PASSPHRASE_ENV} or pass a passphrase"
                )
            passphrase = env.encode()
        try:
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
        except (ValueError, TypeError) as exc:
            # cryptography says "Bad decrypt" for a wrong passphrase; never echo the key.
            raise SigningKeyError(
                f"cannot load private key {path}: wrong passphrase or not a key"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise SigningKeyError("only ECDSA P-256 and Ed25519 keys are supported")
        signer = cls(key)
        signer.encrypted = encrypted
        return signer

    encrypted: bool = True

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            sig = self._key.sign(data)
        else:
            sig = self._key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256())))
        return _checked(self, data, sig)


def generate_key(algorithm: Algorithm) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def write_encrypted_key(
    path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, passphrase: bytes
) -> None:
    """Write an encrypted PKCS#8 PEM (0600, atomic) that imgtool can also read."""
    if len(passphrase) < 8:
        raise SigningKeyError("the passphrase must have at least 8 characters")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    write_secret(path, pem)


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str
    object: str
    module: str
    pin: str | None


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """``pkcs11:token=LABEL;object=KEYLABEL[?module-path=...&pin-value=...]`` (RFC 7512)."""
    if not uri.startswith("pkcs11:"):
        raise SigningKeyError("a PKCS#11 URI starts with pkcs11:")
    path, _, query = uri[len("pkcs11:") :].partition("?")
    attrs: dict[str, str] = {}
    for part in path.split(";"):
        if part:
            k, sep, v = part.partition("=")
            if not sep:
                raise SigningKeyError(f"bad PKCS#11 URI attribute {k!r}")
            attrs[k] = urllib.parse.unquote(v)
    q = dict(urllib.parse.parse_qsl(query))
    if "token" not in attrs or "object" not in attrs:
        raise SigningKeyError("the PKCS#11 URI needs token= and object=")
    module = q.get("module-path") or os.environ.get(PKCS11_MODULE_ENV) or DEFAULT_PKCS11_MODULE
    pin = q.get("pin-value") or os.environ.get(PKCS11_PIN_ENV)
    return Pkcs11Uri(attrs["token"], attrs["object"], module, pin)


class Pkcs11Signer:
    """A key held in a PKCS#11 token; the private key never leaves the token."""

    def __init__(self, uri: str) -> None:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        self._uri = parse_pkcs11_uri(uri)
        if self._uri.pin is None:
            raise SigningKeyError(f"no PIN for the token: set {PKCS11_PIN_ENV}")
        try:
            lib = pkcs11.lib(self._uri.module)
            token = lib.get_token(token_label=self._uri.token)
            self._session = token.open(user_pin=self._uri.pin)
            self._priv: Any = self._session.get_key(
                object_class=ObjectClass.PRIVATE_KEY, label=self._uri.object
            )
            pub = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=self._uri.object)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise SigningKeyError(
                f"PKCS#11 token {self._uri.token!r} key {self._uri.object!r}: "
                f"{type(exc).__name__} {exc}".strip()
            ) from exc
        self._edwards = pub.key_type == KeyType.EC_EDWARDS
        point = bytes(pub[Attribute.EC_POINT])
        # EC_POINT is a DER OCTET STRING around the raw point (SoftHSM2, most HSMs).
        if len(point) >= 2 and point[0] == 0x04 and point[1] == len(point) - 2:
            point = point[2:]
        try:
            if self._edwards:
                self._pub: PublicKey = ed25519.Ed25519PublicKey.from_public_bytes(point)
            else:
                self._pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError as exc:
            raise SigningKeyError(f"unsupported key in the token: {exc}") from exc

    def public_key(self) -> PublicKey:
        return self._pub

    def sign(self, data: bytes) -> bytes:
        import pkcs11
        from pkcs11 import Mechanism

        try:
            if self._edwards:
                sig = bytes(self._priv.sign(data, mechanism=Mechanism.EDDSA))
            else:
                raw = bytes(self._priv.sign(data, mechanism=Mechanism.ECDSA))
                half = len(raw) // 2
                sig = encode_dss_signature(
                    int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                )
        except pkcs11.PKCS11Error as exc:
            raise SigningKeyError(f"PKCS#11 signing failed: {type(exc).__name__}") from exc
        return _checked(self, data, sig)

    def close(self) -> None:
        self._session.close()


class ExternalSigner:
    """A command that signs: message on stdin, raw signature on stdout.

    For ECDSA the command may answer DER or raw ``r||s`` (64 bytes); both are accepted.
    """

    def __init__(self, command: str, public_key: PublicKey, *, timeout: float = 120) -> None:
        self._argv = shlex.split(command)
        if not self._argv:
            raise SigningKeyError("empty external signer command")
        self._pub = public_key
        self._timeout = timeout

    def public_key(self) -> PublicKey:
        return self._pub

    def sign(self, data: bytes) -> bytes:
        try:
            proc = subprocess.run(
                self._argv, input=data, capture_output=True, timeout=self._timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SigningKeyError(f"external signer failed: {exc}") from exc
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise SigningKeyError(f"external signer exited {proc.returncode}: {err[0][:200]}")
        sig = proc.stdout[:1024]
        if isinstance(self._pub, ec.EllipticCurvePublicKey) and len(sig) == 64:
            sig = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
        return _checked(self, data, sig)


def open_signer(spec: str, *, public_key: Path | None = None) -> Signer:
    """Resolve ``--key``: a PEM path, ``pkcs11:...`` URI or ``exec:COMMAND``."""
    if spec.startswith("pkcs11:"):
        return Pkcs11Signer(spec)
    if spec.startswith("exec:"):
        if public_key is None:
            raise SigningKeyError("an external signer needs --pub with its public key")
        return ExternalSigner(spec[len("exec:") :], read_public_key(public_key))
    return FileSigner.load(Path(spec))


def ecdsa_raw(sig: bytes) -> bytes:
    r, s = decode_dss_signature(_strip_der_padding(sig))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
