"""C2SP signed notes and checkpoints: format, key ids, cosignatures, refusals."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetwarden.auditlog.errors import CheckpointError
from fleetwarden.auditlog.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    Ed25519Signer,
    Verifier,
    cosign,
    parse_note,
    sign_note,
    verifier_for,
    verify_note,
)

SEED = bytes(range(32))


def test_checkpoint_note_layout_and_key_id() -> None:
    signer = Ed25519Signer("example.com/log", Ed25519PrivateKey.from_private_bytes(SEED))
    cp = Checkpoint("example.com/log", 5, hashlib.sha256(b"x").digest())
    text = sign_note(cp.body(), signer).text()
    lines = text.split("\n")
    assert lines[0] == "example.com/log" and lines[1] == "5"
    assert base64.b64decode(lines[2]) == cp.root
    assert lines[3] == "" and lines[4].startswith("\u2014 example.com/log ")
    blob = base64.b64decode(lines[4].split(" ")[2])
    pub = signer.public_key()
    # key id per c2sp.org/signed-note: SHA-256(name || 0x0A || 0x01 || key)[:4]
    assert blob[:4] == hashlib.sha256(b"example.com/log\n\x01" + pub).digest()[:4]
    v = verifier_for(signer)
    assert Verifier.parse(v.text()) == v
    got = verify_note(text, [v], origin="example.com/log")
    assert got.checkpoint == cp


def test_refusals() -> None:
    signer = Ed25519Signer("log", Ed25519PrivateKey.generate())
    other = Ed25519Signer("log", Ed25519PrivateKey.generate())
    text = sign_note(Checkpoint("o", 3, b"\x01" * 32).body(), signer).text()
    v = verifier_for(signer)
    with pytest.raises(CheckpointError, match="bad signature"):
        verify_note(text.replace("\n3\n", "\n4\n"), [v])
    with pytest.raises(CheckpointError, match="not signed by a known key"):
        verify_note(text, [verifier_for(other)] if verifier_for(other).id != v.id else [])
    with pytest.raises(CheckpointError, match="not 'p'"):
        verify_note(text, [v], origin="p")
    for bad in [
        "",
        "o\n3\n",
        "o\n3\nAAAA\n\n\u2014 log AAAA\n",
        "o\nx\n" + "A" * 44 + "\n\n\u2014 log AAAAAAA=\n",
        text.replace("\u2014", "-"),
        text + "junk",
        "x" * 2_000_000,
    ]:
        with pytest.raises(CheckpointError):
            verify_note(bad, [v])
    with pytest.raises(CheckpointError):
        Verifier.parse(v.text().replace("+", "+0", 1))
    with pytest.raises(CheckpointError):
        sign_note(
            b"o\n1\n" + base64.b64encode(b"\0" * 32) + b"\n",
            Ed25519Signer("bad name", Ed25519PrivateKey.generate()),
        )


def test_unknown_extra_signatures_are_ignored_and_cosignature_checked() -> None:
    log = Ed25519Signer("log", Ed25519PrivateKey.generate())
    wit = Ed25519Signer("witness", Ed25519PrivateKey.generate())
    stranger = Ed25519Signer("stranger", Ed25519PrivateKey.generate())
    note = sign_note(Checkpoint("o", 3, b"\x01" * 32).body(), log)
    note = cosign(note, wit, timestamp=1_700_000_000)
    note = cosign(note, stranger)
    wv = verifier_for(wit, ALG_COSIGNATURE_V1)
    got = verify_note(note.text(), [verifier_for(log)], witnesses=[wv])
    assert got.cosigned_by == (("witness", 1_700_000_000),)
    parsed = parse_note(note.text())
    assert len(parsed.signatures) == 3
    with pytest.raises(CheckpointError, match="lacks cosignatures"):
        verify_note(sign_note(note.body, log).text(), [verifier_for(log)], witnesses=[wv])
    forged = note.text().replace(
        note.signatures[1].line(),
        note.signatures[1].line()[:-6]
        + ("AAAA=\n" if not note.signatures[1].line().endswith("AAAA=\n") else "BBBB=\n"),
    )
    with pytest.raises(CheckpointError):
        verify_note(forged, [verifier_for(log)], witnesses=[wv])


def test_key_file_created_0600_and_refused_when_readable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import stat

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fleetwarden.auditlog.errors import SigningKeyError
    from fleetwarden.auditlog.keys import load_or_create_file_key

    path = tmp_path / "keys" / "ck.pem"
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_or_create_file_key(path, "log", create=False)
    s1 = load_or_create_file_key(path, "log")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_file_key(path, "log").public_key() == s1.public_key()
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_or_create_file_key(path, "log")
    other = tmp_path / "ec.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(other, 0o600)
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_or_create_file_key(other, "log")
    garbage = tmp_path / "g.pem"
    garbage.write_text("nope")
    os.chmod(garbage, 0o600)
    with pytest.raises(SigningKeyError, match="cannot load"):
        load_or_create_file_key(garbage, "log")
