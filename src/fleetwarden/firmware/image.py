"""MCUboot image format: signing and streaming verification (control C6, mistake M2).

Layout (little-endian, as produced by imgtool and checked by MCUboot)::

    header (32 bytes, padded to hdr_size) | payload (img_size) |
    protected TLV area (magic 0x6908, covered by the hash) |
    unprotected TLV area (magic 0x6907: SHA-256, key hash, signature)

Invariants of :func:`verify_image`:
- it reads the file once, in fixed-size chunks: memory does not grow with image size;
- every length field is checked against the real file size before it is trusted, and
  the file must end exactly where the unprotected TLV area ends (no trailing data);
- the unprotected area may only hold the hash, key identification and signature TLVs
  (``UNPROTECTED_ALLOWED``); anything else — a security counter, a dependency, a vendor
  TLV — is refused, because it is not covered by the signature (the MCUboot
  CVE-2024-32883 pattern). The security counter is read from the protected area only;
- a key is only ever used if it is in the caller's trusted set, matched by key hash: a
  public key embedded in the image (PUBKEY TLV) is an identifier, never a trust anchor;
- the image is accepted only when the SHA-256 TLV matches the digest computed and a
  signature over that digest verifies with a trusted key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleetwarden.firmware.errors import ImageRejectedError
from fleetwarden.firmware.keys import (
    PublicKey,
    Signer,
    algorithm_of,
    key_hash,
    spki_der,
    verify_signature,
)

IMAGE_MAGIC = 0x96F3B83D
HEADER = struct.Struct("<IIHHIIBBHII")
HEADER_SIZE = HEADER.size  # 32
DEFAULT_HEADER_SIZE = 0x200  # what Zephyr/MCUboot builds use (imgtool --pad-header)
TLV_INFO = struct.Struct("<HH")
TLV_HDR = struct.Struct("<HH")
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908

TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
TLV_SHA384 = 0x11
TLV_SHA512 = 0x12
TLV_RSA2048 = 0x20
TLV_ECDSA_SIG = 0x22
TLV_RSA3072 = 0x23
TLV_ED25519 = 0x24
TLV_SIG_PURE = 0x25
TLV_SEC_CNT = 0x50

TLV_NAMES = {
    TLV_KEYHASH: "KEYHASH",
    TLV_PUBKEY: "PUBKEY",
    TLV_SHA256: "SHA256",
    TLV_ECDSA_SIG: "ECDSASIG",
    TLV_ED25519: "ED25519",
    TLV_SIG_PURE: "SIG_PURE",
    TLV_SEC_CNT: "SEC_CNT",
    0x40: "DEPENDENCY",
    0x60: "BOOT_RECORD",
}

#: the only TLVs allowed outside the signed region
UNPROTECTED_ALLOWED = frozenset({TLV_KEYHASH, TLV_PUBKEY, TLV_SHA256, TLV_ECDSA_SIG, TLV_ED25519})
SIG_TLV = {"ecdsa-p256": TLV_ECDSA_SIG, "ed25519": TLV_ED25519}

FLAG_ENCRYPTED = 0x04 | 0x08
CHUNK = 1 << 20
MAX_TLV_AREA = 0xFFFF


@dataclass(frozen=True, slots=True)
class ImageVersion:
    major: int
    minor: int
    revision: int
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> ImageVersion:
        """``major[.minor[.revision[+build]]]`` as imgtool accepts it."""
        base, _, build = text.strip().partition("+")
        parts = base.split(".")
        try:
            if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
                raise ValueError
            nums = [int(p) for p in parts] + [0] * (3 - len(parts))
            b = int(build) if build else 0
            if build and not build.isdigit():
                raise ValueError
        except ValueError:
            raise ImageRejectedError(
                f"invalid version {text!r}: expected major.minor.revision[+build]"
            ) from None
        v = cls(nums[0], nums[1], nums[2], b)
        if v.major > 0xFF or v.minor > 0xFF or v.revision > 0xFFFF or v.build > 0xFFFFFFFF:
            raise ImageRejectedError(
                f"version {text!r} out of range (major, minor < 256; revision < 65536)"
            )
        return v

    def key(self) -> tuple[int, int, int, int]:
        return (self.major, self.minor, self.revision, self.build)

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.revision}"
        return f"{s}+{self.build}" if self.build else s


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """What a successful verification proves about an image."""

    version: ImageVersion
    security_counter: int | None
    digest: bytes  # SHA-256 of the hashed region (the signed message)
    key_id: str  # hex key hash of the trusted key that signed
    algorithm: str
    size: int  # whole file
    payload_size: int
    header_size: int
    file_sha256: bytes  # SHA-256 of the whole file (what TUF and DDI advertise)


def _reject(reason: str) -> ImageRejectedError:
    return ImageRejectedError(f"image rejected: {reason}")


def _read_exact(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _reject(f"truncated ({what})")
    return data


def _parse_tlvs(area: bytes, magic: int, *, protected: bool) -> list[tuple[int, bytes]]:
    """Parse a TLV area (info header included); every length must fit exactly."""
    where = "protected" if protected else "unprotected"
    if len(area) < TLV_INFO.size:
        raise _reject(f"{where} TLV area is truncated")
    got_magic, total = TLV_INFO.unpack_from(area)
    if got_magic != magic:
        raise _reject(f"{where} TLV area has bad magic 0x{got_magic:04x}")
    if total != len(area):
        raise _reject(f"{where} TLV area length {total} does not match {len(area)}")
    out: list[tuple[int, bytes]] = []
    off = TLV_INFO.size
    while off < total:
        if off + TLV_HDR.size > total:
            raise _reject(f"{where} TLV header runs past the area")
        kind, length = TLV_HDR.unpack_from(area, off)
        off += TLV_HDR.size
        if off + length > total:
            raise _reject(f"{where} TLV 0x{kind:02x} runs past the area")
        out.append((kind, area[off : off + length]))
        off += length
    return out


def verify_image(
    path: Path | str,
    trusted: Mapping[str, PublicKey] | Iterable[PublicKey],
    *,
    max_size: int | None = None,
) -> VerifiedImage:
    """Verify an MCUboot image file against trusted public keys (see module invariants).

    ``trusted`` maps hex key hashes to keys, or is a plain iterable of keys.
    """
    keys = (
        dict(trusted) if isinstance(trusted, Mapping) else {key_hash(k).hex(): k for k in trusted}
    )
    if not keys:
        raise _reject("no trusted keys to verify against")
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below; streaming needs the handle)
    except OSError as exc:
        raise ImageRejectedError(f"cannot read image {path}: {exc.strerror}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if max_size is not None and size > max_size:
            raise ImageRejectedError(f"image is {size} bytes, over the limit of {max_size}")
        return _verify_stream(fh, size, keys)


def _verify_stream(fh: BinaryIO, size: int, keys: Mapping[str, PublicKey]) -> VerifiedImage:
    if size < HEADER_SIZE:
        raise _reject("truncated (shorter than the 32-byte header)")
    head = _read_exact(fh, HEADER_SIZE, "header")
    (magic, _load, hdr_size, prot_size, img_size, flags, major, minor, rev, build, _pad) = (
        HEADER.unpack(head)
    )
    if magic != IMAGE_MAGIC:
        raise _reject(f"not an MCUboot image (magic 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x})")
    if hdr_size < HEADER_SIZE:
        raise _reject(f"header size {hdr_size} is smaller than {HEADER_SIZE}")
    if flags & FLAG_ENCRYPTED:
        raise _reject("encrypted images are not supported (the hash covers the plaintext)")
    if prot_size and prot_size < TLV_INFO.size:
        raise _reject(f"protected TLV size {prot_size} is too small")
    hashed_end = hdr_size + img_size + prot_size
    if hashed_end + TLV_INFO.size > size:
        raise _reject(
            f"truncated: header announces {hashed_end} hashed bytes plus TLVs, file has {size}"
        )
    digest = hashlib.sha256(head)
    whole = hashlib.sha256(head)
    # Stream header padding and payload; keep only the last TLV bytes in memory.
    remaining = hdr_size + img_size - HEADER_SIZE
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while remaining:
        n = fh.readinto(view[: min(CHUNK, remaining)])  # type: ignore[attr-defined]
        if not n:
            raise _reject("truncated (payload)")
        digest.update(view[:n])
        whole.update(view[:n])
        remaining -= n
    prot_area = _read_exact(fh, prot_size, "protected TLVs") if prot_size else b""
    digest.update(prot_area)
    whole.update(prot_area)
    info = _read_exact(fh, TLV_INFO.size, "TLV info")
    info_magic, total = TLV_INFO.unpack(info)
    if info_magic == TLV_PROT_INFO_MAGIC:
        raise _reject("protected TLV area present but not counted in the header")
    if info_magic != TLV_INFO_MAGIC:
        raise _reject(f"bad TLV info magic 0x{info_magic:04x}")
    if hashed_end + total > size:
        raise _reject("truncated (unprotected TLV area)")
    if hashed_end + total < size:
        raise _reject(f"{size - hashed_end - total} unexpected bytes after the TLV area")
    rest = _read_exact(fh, total - TLV_INFO.size, "unprotected TLVs")
    unprot_area = info + rest
    whole.update(unprot_area)

    counter: int | None = None
    if prot_size:
        for kind, value in _parse_tlvs(prot_area, TLV_PROT_INFO_MAGIC, protected=True):
            if kind == TLV_SEC_CNT:
                if counter is not None:
                    raise _reject("more than one security counter TLV")
                if len(value) != 4:
                    raise _reject("security counter TLV must be 4 bytes")
                counter = int.from_bytes(value, "little")
    sha: bytes | None = None
    ids: list[bytes] = []
    sigs: list[tuple[int, bytes]] = []
    for kind, value in _parse_tlvs(unprot_area, TLV_INFO_MAGIC, protected=False):
        if kind not in UNPROTECTED_ALLOWED:
            name = TLV_NAMES.get(kind, f"0x{kind:02x}")
            raise _reject(
                f"TLV {name} is not allowed in the unprotected area (not covered by the "
                "signature; CVE-2024-32883 pattern)"
            )
        if kind == TLV_SHA256:
            if sha is not None:
                raise _reject("more than one SHA256 TLV")
            if len(value) != 32:
                raise _reject("SHA256 TLV must be 32 bytes")
            sha = value
        elif kind == TLV_KEYHASH:
            if len(value) != 32:
                raise _reject("KEYHASH TLV must be 32 bytes")
            ids.append(value)
        elif kind == TLV_PUBKEY:
            ids.append(hashlib.sha256(value).digest())
        else:
            sigs.append((kind, value))
    computed = digest.digest()
    if sha is None:
        raise _reject("no SHA256 TLV")
    if not hmac.compare_digest(sha, computed):
        raise _reject("SHA-256 mismatch: the image was modified after signing")
    if not sigs:
        raise _reject("unsigned image (no signature TLV)")
    known = [(i, keys[i.hex()]) for i in ids if i.hex() in keys]
    if not known:
        shown = ", ".join(i.hex()[:16] for i in ids) or "none given"
        raise _reject(f"signed by an unknown key (key hash {shown})")
    for kid, key in known:
        alg = algorithm_of(key)
        for kind, sig in sigs:
            if kind == SIG_TLV[alg] and verify_signature(key, sig, computed):
                return VerifiedImage(
                    version=ImageVersion(major, minor, rev, build),
                    security_counter=counter,
                    digest=computed,
                    key_id=kid.hex(),
                    algorithm=alg,
                    size=size,
                    payload_size=img_size,
                    header_size=hdr_size,
                    file_sha256=whole.digest(),
                )
    raise _reject("signature does not verify with the trusted key")


def sign_image(
    raw: Path,
    out: Path,
    signer: Signer,
    *,
    version: ImageVersion,
    security_counter: int,
    header_size: int = DEFAULT_HEADER_SIZE,
    load_addr: int = 0,
    embed_public_key: bool = False,
) -> VerifiedImage:
    """Wrap a raw binary into a signed MCUboot image, written atomically to ``out``.

    The TLV order matches imgtool's: protected SEC_CNT; unprotected SHA256, KEYHASH (or
    PUBKEY), signature. The result is re-verified before it is written.
    """
    if not HEADER_SIZE <= header_size <= 0xFFFF:
        raise ImageRejectedError(f"header size must be between {HEADER_SIZE} and 65535")
    if not 0 <= security_counter <= 0xFFFFFFFF:
        raise ImageRejectedError("security counter must fit in 32 bits")
    pub = signer.public_key()
    alg = algorithm_of(pub)
    try:
        payload_size = raw.stat().st_size
        src = raw.open("rb")
    except OSError as exc:
        raise ImageRejectedError(f"cannot read {raw}: {exc.strerror}") from exc
    if payload_size > 0xFFFFFFFF:
        src.close()
        raise ImageRejectedError("payload larger than 4 GiB cannot be described by the header")
    prot = TLV_HDR.pack(TLV_SEC_CNT, 4) + struct.pack("<I", security_counter)
    prot_area = TLV_INFO.pack(TLV_PROT_INFO_MAGIC, TLV_INFO.size + len(prot)) + prot
    header = HEADER.pack(
        IMAGE_MAGIC,
        load_addr,
        header_size,
        len(prot_area),
        payload_size,
        0,
        version.major,
        version.minor,
        version.revision,
        version.build,
        0,
    ) + bytes(header_size - HEADER_SIZE)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    h = hashlib.sha256(header)
    try:
        with src, tmp.open("wb") as dst:
            dst.write(header)
            while chunk := src.read(CHUNK):
                h.update(chunk)
                dst.write(chunk)
            if dst.tell() != header_size + payload_size:
                raise ImageRejectedError(f"{raw} changed while it was being signed")
            h.update(prot_area)
            dst.write(prot_area)
            digest = h.digest()
            sig = signer.sign(digest)
            ident = (
                TLV_HDR.pack(TLV_PUBKEY, len(spki_der(pub))) + spki_der(pub)
                if embed_public_key
                else TLV_HDR.pack(TLV_KEYHASH, 32) + key_hash(pub)
            )
            tlvs = (
                TLV_HDR.pack(TLV_SHA256, 32)
                + digest
                + ident
                + TLV_HDR.pack(SIG_TLV[alg], len(sig))
                + sig
            )
            dst.write(TLV_INFO.pack(TLV_INFO_MAGIC, TLV_INFO.size + len(tlvs)) + tlvs)
            dst.flush()
            os.fsync(dst.fileno())
        result = verify_image(tmp, [pub])
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


__all__ = [
    "IMAGE_MAGIC",
    "ImageVersion",
    "VerifiedImage",
    "sign_image",
    "verify_image",
]
