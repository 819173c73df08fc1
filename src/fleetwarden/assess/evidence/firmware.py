"""Firmware images (``firmware/``): a minimal MCUboot reader plus content scans.

MCUboot layout (docs/design.md of mcu-tools/mcuboot): a 32-byte little-endian header
(magic 0x96f3b83d, load address, header size, protected-TLV size, image size, flags,
version major.minor.revision+build), the image, then an optional protected TLV area
(magic 0x6908, holding e.g. the security counter) and the TLV area (magic 0x6907,
holding the SHA-256 of header+image+protected TLVs, the key hash and the signature).

This reader is deliberately minimal (verify hash and signature, read version and
security counter). The firmware control (branch ``firmware``) carries a complete
implementation; the two are to be unified once it lands.

Anything that is not an MCUboot image is ``raw``: unsigned, as far as the assessment
can tell.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io
from fleetwarden.assess.evidence.types import FirmwareImage

IMAGE_MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
HEADER = struct.Struct("<IIHHIIBBHII")
TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
TLV_RSA2048_PSS = 0x20
TLV_ECDSA224 = 0x21
TLV_ECDSA_SIG = 0x22
TLV_RSA3072_PSS = 0x23
TLV_ED25519 = 0x24
TLV_SEC_CNT = 0x50
SIG_TYPES = {
    TLV_RSA2048_PSS: "rsa2048-pss",
    TLV_ECDSA224: "ecdsa-p224",
    TLV_ECDSA_SIG: "ecdsa",
    TLV_RSA3072_PSS: "rsa3072-pss",
    TLV_ED25519: "ed25519",
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----")
_CREDENTIALS = re.compile(
    rb"(?i)(?:password|passwd|pwd|secret|api[_-]?key|token)\s*[=:]\s*[\"']?([^\s\"'\x00]{4,64})"
    rb"|(?:mqtts?|https?|ftp)://[^\s:/@\x00]{1,64}:[^\s@/\x00]{1,64}@"
    rb"|AKIA[0-9A-Z]{16}"
)
_SERVICES = {
    "telnetd": re.compile(rb"\btelnetd\b"),
    "gdbserver": re.compile(rb"\bgdbserver\b"),
    "jtag/swd debug enabled": re.compile(
        rb"(?i)\b(?:jtag|swd)_?(?:debug_)?enable[d]?\s*=\s*(?:1|y|true)"
    ),
    "uart root shell": re.compile(rb"(?i)\bconsole=tty\S*.*\binit=/bin/sh\b"),
}
_VERSION_IN_NAME = re.compile(r"[-_]v?\d+(?:\.\d+)*(?:[-+_].*)?$")


def load_key(data: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            priv = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise EvidenceError("not a PEM public key") from exc
        key = priv.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise EvidenceError(f"unsupported key type {type(key).__name__}")
    return key


def _verify(key: PublicKey, sig_type: int, digest: bytes, sig: bytes) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and sig_type in {TLV_RSA2048_PSS, TLV_RSA3072_PSS}:
            key.verify(
                sig,
                digest,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                utils.Prehashed(hashes.SHA256()),
            )
        elif isinstance(key, ec.EllipticCurvePublicKey) and sig_type in {
            TLV_ECDSA_SIG,
            TLV_ECDSA224,
        }:
            key.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        elif isinstance(key, ed25519.Ed25519PublicKey) and sig_type == TLV_ED25519:
            key.verify(sig, digest)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _tlvs(data: bytes, off: int, magic: int) -> tuple[list[tuple[int, bytes]], int]:
    if off + 4 > len(data):
        raise EvidenceError("TLV area truncated")
    m, total = struct.unpack_from("<HH", data, off)
    if m != magic:
        raise EvidenceError(f"bad TLV magic 0x{m:04x}")
    end = off + total
    if end > len(data) or total < 4:
        raise EvidenceError("TLV area runs past the end of the file")
    out = []
    p = off + 4
    while p < end:
        if p + 4 > end:
            raise EvidenceError("TLV entry truncated")
        t, n = struct.unpack_from("<HH", data, p)
        if p + 4 + n > end:
            raise EvidenceError("TLV value runs past its area")
        out.append((t, data[p + 4 : p + 4 + n]))
        p += 4 + n
    return out, end


def parse_image(data: bytes, path: str, keys: dict[str, PublicKey]) -> FirmwareImage:
    stem = Path(path).name.rsplit(".", 1)[0]
    img = FirmwareImage(
        path=path,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        format="raw",
        product=_VERSION_IN_NAME.sub("", stem) or stem,
    )
    scan(data, img)
    if len(data) < HEADER.size or struct.unpack_from("<I", data)[0] != IMAGE_MAGIC:
        return img
    img.format = "mcuboot"
    (_, _, hdr_size, prot_size, img_size, _, major, minor, rev, build, _) = HEADER.unpack_from(data)
    img.version = (major, minor, rev, build)
    body_end = hdr_size + img_size
    if hdr_size < HEADER.size or body_end > len(data):
        img.problem = "header sizes run past the end of the file"
        return img
    try:
        entries: list[tuple[int, bytes]] = []
        off = body_end
        if prot_size:
            prot, off = _tlvs(data, off, TLV_PROT_INFO_MAGIC)
            entries += prot
        signed_end = off
        unprot, _ = _tlvs(data, off, TLV_INFO_MAGIC)
        entries += unprot
    except EvidenceError as exc:
        img.problem = str(exc)
        return img
    digest = hashlib.sha256(data[:signed_end]).digest()
    found = dict(entries)
    if TLV_SEC_CNT in found and len(found[TLV_SEC_CNT]) == 4:
        img.security_counter = struct.unpack("<I", found[TLV_SEC_CNT])[0]
    img.hash_ok = found.get(TLV_SHA256) == digest
    sigs = [(t, v) for t, v in entries if t in SIG_TYPES]
    img.signed = bool(sigs)
    if sigs:
        img.signature_type = SIG_TYPES[sigs[0][0]]
        if keys:
            img.signature_valid = False
            if img.hash_ok:
                for name, key in keys.items():
                    if any(_verify(key, t, digest, v) for t, v in sigs):
                        img.signature_valid, img.signer = True, name
                        break
    return img


def scan(data: bytes, img: FirmwareImage) -> None:
    """Look for embedded private keys, hard-coded credentials and debug services."""
    for m in _PRIVATE_KEY.finditer(data):
        img.private_keys.append(f"offset {m.start()}: {m.group(0).decode()[:40]}")
        if len(img.private_keys) >= 10:
            break
    for m in _CREDENTIALS.finditer(data):
        # record where and what kind, never the secret itself
        kind = m.group(0)[:12].decode("ascii", "replace").split("=")[0].split(":")[0]
        img.credentials.append(f"offset {m.start()}: {kind.strip()}")
        if len(img.credentials) >= 10:
            break
    for name, rx in _SERVICES.items():
        if rx.search(data):
            img.services.append(name)


def read_key(path: Path) -> PublicKey:
    return load_key(_io.read_bytes(path, _io.LIMITS["key"]))


def read_image(path: Path, root: Path, keys: dict[str, PublicKey]) -> FirmwareImage:
    img = parse_image(_io.read_bytes(path, _io.LIMITS["firmware"]), _io.rel(root, path), keys)
    _control_plane_verdict(path, img, keys)
    return img


def _control_plane_verdict(path: Path, img: FirmwareImage, keys: dict[str, PublicKey]) -> None:
    """Let the firmware control's verifier (C6, ``fleetwarden.firmware.image``) decide.

    It is stricter than this reader (no trailing data, nothing but hash, key id and
    signature in the unprotected TLVs: the CVE-2024-32883 pattern), so an image the
    control plane would refuse is not reported as validly signed here. It knows ECDSA
    P-256 and Ed25519; RSA-signed images keep this reader's verdict.
    """
    from fleetwarden.firmware.errors import ImageRejectedError
    from fleetwarden.firmware.image import verify_image

    cp_keys = [
        k
        for k in keys.values()
        if isinstance(k, ed25519.Ed25519PublicKey)
        or (isinstance(k, ec.EllipticCurvePublicKey) and k.curve.name == "secp256r1")
    ]
    if not img.signed or not cp_keys or img.signature_type not in {"ecdsa", "ed25519"}:
        return
    try:
        verify_image(path, cp_keys, max_size=_io.LIMITS["firmware"])
    except ImageRejectedError as exc:
        img.signature_valid = False
        img.problem = str(exc)[:300]
