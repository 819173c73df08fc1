"""C2SP signed notes (https://c2sp.org/signed-note) and checkpoints (c2sp.org/tlog-checkpoint).

A checkpoint body is three lines: the log's origin, the tree size in decimal, and the
root hash in standard base64, each ending with a newline. A signed note is the body, an
empty line, then one line per signature: ``— <key name> <base64(key id || signature)>``
(U+2014 EM DASH). For Ed25519 (algorithm byte 0x01) the key id is the first four bytes of
SHA-256(name || 0x0A || 0x01 || public key) and the signature covers the body bytes.
A witness cosignature (c2sp.org/tlog-cosignature, algorithm 0x04) signs
``"cosignature/v1\\ntime <t>\\n" + body`` and its value is key id || 8-byte big-endian
time || signature.

Verifier keys use the Go ``note`` package's text form: ``<name>+<key id hex>+<base64(0x01
|| public key)>``, so a third-party tool (Go's golang.org/x/mod/sumdb/note, or the
standalone verifier in docs/auditlog.md) can check our checkpoints.

Invariants: a parsed note is only trusted after :func:`verify_note` found a signature by
a known key; signatures by unknown keys are ignored (as the spec says), and a signature
line that names a known key but fails is an error, never silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetwarden.auditlog.errors import CheckpointError

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
DASH = "\u2014"
MAX_NOTE_BYTES = 1_000_000


def key_id(name: str, alg: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise CheckpointError(f"invalid key name {name!r}: no spaces or '+' allowed")


class Signer(Protocol):
    """Anything that signs with Ed25519: a key file or a PKCS#11 token."""

    name: str

    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass
class Ed25519Signer:
    name: str
    key: Ed25519PrivateKey

    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


@dataclass(frozen=True)
class Verifier:
    name: str
    alg: int
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.alg, self.public)

    def text(self) -> str:
        """The Go note verifier-key form: name+hexid+base64(alg||key)."""
        blob = base64.b64encode(bytes([self.alg]) + self.public).decode()
        return f"{self.name}+{self.id.hex()}+{blob}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            name, hexid, blob = text.strip().split("+", 2)
            raw = base64.b64decode(blob, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise CheckpointError(f"malformed verifier key {text[:80]!r}") from exc
        _check_name(name)
        if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise CheckpointError("verifier key is not an Ed25519 key")
        v = cls(name, raw[0], raw[1:])
        if v.id.hex() != hexid.lower():
            raise CheckpointError(f"verifier key {name}: key id does not match the key")
        return v

    def check(self, message: bytes, sig: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(sig, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def verifier_for(signer: Signer, alg: int = ALG_ED25519) -> Verifier:
    return Verifier(signer.name, alg, signer.public_key())


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return ("\n".join([*lines, *self.extensions]) + "\n").encode()

    @classmethod
    def parse_body(cls, body: bytes) -> Checkpoint:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError("checkpoint is not UTF-8") from exc
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint needs origin, size and root hash lines")
        origin, size_s, root_s = lines[:3]
        if not origin or not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
            raise CheckpointError("checkpoint origin or size line is malformed")
        try:
            root = base64.b64decode(root_s, validate=True)
        except binascii.Error as exc:
            raise CheckpointError("checkpoint root hash is not base64") from exc
        if len(root) != 32:
            raise CheckpointError("checkpoint root hash is not 32 bytes")
        return cls(origin, int(size_s), root, tuple(lines[3:]))


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    blob: bytes

    def line(self) -> str:
        return f"{DASH} {self.name} {base64.b64encode(self.key_id + self.blob).decode()}\n"


@dataclass(frozen=True)
class Note:
    body: bytes
    signatures: tuple[Signature, ...]

    def text(self) -> str:
        return self.body.decode() + "\n" + "".join(s.line() for s in self.signatures)


def sign_note(body: bytes, signer: Signer) -> Note:
    _check_name(signer.name)
    sig = signer.sign(body)
    kid = key_id(signer.name, ALG_ED25519, signer.public_key())
    return Note(body, (Signature(signer.name, kid, sig),))


def cosign(note: Note, witness: Signer, *, timestamp: int | None = None) -> Note:
    """Add a c2sp tlog-cosignature/v1 by ``witness`` to ``note``."""
    _check_name(witness.name)
    t = int(time.time()) if timestamp is None else timestamp
    msg = b"cosignature/v1\ntime %d\n" % t + note.body
    kid = key_id(witness.name, ALG_COSIGNATURE_V1, witness.public_key())
    blob = struct.pack(">Q", t) + witness.sign(msg)
    return Note(note.body, (*note.signatures, Signature(witness.name, kid, blob)))


def parse_note(text: str | bytes) -> Note:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_NOTE_BYTES:
        raise CheckpointError("signed note is too large")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError("signed note is not UTF-8") from exc
    sep = s.rfind("\n\n")
    if sep < 0:
        raise CheckpointError("signed note has no signature block")
    body, sigblock = s[: sep + 1], s[sep + 2 :]
    if not sigblock.endswith("\n"):
        raise CheckpointError("signature block must end with a newline")
    sigs: list[Signature] = []
    for line in sigblock[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise CheckpointError(f"malformed signature line {line[:80]!r}")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except binascii.Error as exc:
            raise CheckpointError("signature is not base64") from exc
        if len(blob) < 5:
            raise CheckpointError("signature is too short")
        sigs.append(Signature(parts[1], blob[:4], blob[4:]))
    if not sigs:
        raise CheckpointError("signed note has no signatures")
    return Note(body.encode(), tuple(sigs))


@dataclass(frozen=True)
class VerifiedNote:
    note: Note
    checkpoint: Checkpoint
    signed_by: tuple[str, ...]
    cosigned_by: tuple[tuple[str, int], ...]


def verify_note(
    text: str | bytes,
    verifiers: Iterable[Verifier],
    *,
    witnesses: Sequence[Verifier] = (),
    origin: str | None = None,
) -> VerifiedNote:
    """Parse and verify a checkpoint note; raise CheckpointError unless a known log key
    signed it (and every required witness cosigned it)."""
    note = parse_note(text)
    cp = Checkpoint.parse_body(note.body)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for log {cp.origin!r}, not {origin!r}")
    keys = {(v.name, v.id): v for v in verifiers}
    wkeys = {(w.name, w.id): w for w in witnesses}
    signed: list[str] = []
    cosigned: list[tuple[str, int]] = []
    for sig in note.signatures:
        v = keys.get((sig.name, sig.key_id))
        if v is not None:
            if not v.check(note.body, sig.blob):
                raise CheckpointError(f"bad signature by {sig.name} on checkpoint {cp.size}")
            signed.append(sig.name)
            continue
        w = wkeys.get((sig.name, sig.key_id))
        if w is not None:
            if len(sig.blob) != 8 + 64:
                raise CheckpointError(f"malformed cosignature by {sig.name}")
            (t,) = struct.unpack(">Q", sig.blob[:8])
            msg = b"cosignature/v1\ntime %d\n" % t + note.body
            if not w.check(msg, sig.blob[8:]):
                raise CheckpointError(f"bad cosignature by {sig.name} on checkpoint {cp.size}")
            cosigned.append((sig.name, t))
    if not signed:
        names = ", ".join(s.name for s in note.signatures)
        raise CheckpointError(
            f"checkpoint {cp.size} is not signed by a known key (signers: {names})"
        )
    missing = [w.name for w in witnesses if w.name not in {n for n, _ in cosigned}]
    if missing:
        raise CheckpointError(f"checkpoint {cp.size} lacks cosignatures by {', '.join(missing)}")
    return VerifiedNote(note, cp, tuple(signed), tuple(cosigned))
