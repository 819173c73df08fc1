"""MCUboot image signing and verification, and every refusal (bad input table)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from fleetwarden.firmware.errors import ImageRejectedError
from fleetwarden.firmware.image import (
    HEADER,
    TLV_INFO,
    ImageVersion,
    sign_image,
    verify_image,
)
from fleetwarden.firmware.keys import FileSigner, generate_key


def _signed(tmp_path: Path, raw: Path, signer: FileSigner, **kw: object) -> Path:
    out = tmp_path / "img.bin"
    sign_image(
        raw,
        out,
        signer,
        version=ImageVersion.parse(str(kw.get("version", "1.2.3+7"))),
        security_counter=int(kw.get("counter", 5)),  # type: ignore[call-overload]
    )
    return out


def test_sign_then_verify(tmp_path: Path, raw: Path, signer: FileSigner) -> None:
    img = _signed(tmp_path, raw, signer)
    v = verify_image(img, [signer.public_key()])
    assert str(v.version) == "1.2.3+7"
    assert v.security_counter == 5
    assert v.payload_size == raw.stat().st_size
    assert img.read_bytes()[0x200 : 0x200 + 70_000] == raw.read_bytes()


def _hashed_end(data: bytes) -> int:
    _, _, hdr, prot, size, *_ = HEADER.unpack_from(data)
    return int(hdr + size + prot)


def _inject_unprotected(data: bytes, kind: int, value: bytes) -> bytes:
    end = _hashed_end(data)
    magic, total = TLV_INFO.unpack_from(data, end)
    extra = struct.pack("<HH", kind, len(value)) + value
    return data[:end] + TLV_INFO.pack(magic, total + len(extra)) + data[end + 4 :] + extra


BAD: list[tuple[str, object, str]] = [
    ("empty", lambda d: b"", "truncated"),
    ("garbage", lambda d: b"\x00" * 4096, "not an MCUboot image"),
    ("truncated payload", lambda d: d[:1000], "truncated"),
    ("truncated tlvs", lambda d: d[:-10], "truncated"),
    ("trailing bytes", lambda d: d + b"\xff" * 16, "unexpected bytes"),
    ("payload flipped", lambda d: d[:600] + bytes([d[600] ^ 1]) + d[601:], "SHA-256 mismatch"),
    (
        "counter injected unprotected (CVE-2024-32883)",
        lambda d: _inject_unprotected(d, 0x50, struct.pack("<I", 999)),
        "not allowed in the unprotected area",
    ),
    (
        "vendor tlv injected unprotected",
        lambda d: _inject_unprotected(d, 0xA0, b"evil"),
        "not allowed in the unprotected area",
    ),
    (
        "second sha256",
        lambda d: _inject_unprotected(d, 0x10, b"\x00" * 32),
        "more than one SHA256",
    ),
    (
        "header counter bumped",
        lambda d: d[:20] + bytes([d[20] + 1]) + d[21:],
        "SHA-256 mismatch",
    ),
    (
        "huge image size",
        lambda d: d[:12] + struct.pack("<I", 0xFFFFFFF0) + d[16:],
        "truncated",
    ),
    (
        "tlv length runs past area",
        lambda d: d[: _hashed_end(d) + 6] + b"\xff\x7f" + d[_hashed_end(d) + 8 :],
        "runs past",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "reason"), BAD, ids=[b[0] for b in BAD])
def test_refusals(
    tmp_path: Path, raw: Path, signer: FileSigner, case: str, mutate: object, reason: str
) -> None:
    img = _signed(tmp_path, raw, signer)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(img.read_bytes()))  # type: ignore[operator]
    with pytest.raises(ImageRejectedError, match=reason):
        verify_image(bad, [signer.public_key()])


def test_unknown_key(tmp_path: Path, raw: Path, signer: FileSigner) -> None:
    img = _signed(tmp_path, raw, signer)
    other = FileSigner(generate_key("ed25519")).public_key()
    with pytest.raises(ImageRejectedError, match="unknown key"):
        verify_image(img, [other])


def test_signature_replaced_by_other_key(tmp_path: Path, raw: Path) -> None:
    """Key hash of a trusted key, signature by another key: refused."""
    from fleetwarden.firmware.keys import key_hash

    good = FileSigner(generate_key("ed25519"))
    evil = FileSigner(generate_key("ed25519"))
    img = _signed(tmp_path, raw, evil)
    data = img.read_bytes().replace(key_hash(evil.public_key()), key_hash(good.public_key()))
    img.write_bytes(data)
    with pytest.raises(ImageRejectedError, match="signature does not verify"):
        verify_image(img, [good.public_key()])


def test_signer_that_lies_is_caught(tmp_path: Path, raw: Path) -> None:
    from fleetwarden.firmware.errors import SigningKeyError
    from fleetwarden.firmware.keys import _checked

    good = FileSigner(generate_key("ecdsa-p256"))
    evil = FileSigner(generate_key("ecdsa-p256"))
    with pytest.raises(SigningKeyError, match="does not verify"):
        _checked(good, b"y" * 32, evil.sign(b"y" * 32))


def test_version_parse() -> None:
    assert str(ImageVersion.parse("1")) == "1.0.0"
    assert ImageVersion.parse("1.2.3+4").key() == (1, 2, 3, 4)
    for bad in ("", "a.b", "1.2.3.4", "256.0.0", "1.0.70000", "1.2.3+x", "-1.0.0"):
        with pytest.raises(ImageRejectedError):
            ImageVersion.parse(bad)


def test_memory_flat_reading(tmp_path: Path, signer: FileSigner) -> None:
    """Verification reads in fixed chunks: a 64 MiB sparse payload needs no 64 MiB buffer."""
    import tracemalloc

    raw = tmp_path / "big.raw"
    with raw.open("wb") as fh:
        fh.truncate(64 << 20)
    img = tmp_path / "big.img"
    sign_image(raw, img, signer, version=ImageVersion(1, 0, 0), security_counter=1)
    tracemalloc.start()
    verify_image(img, [signer.public_key()])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20
