#!/usr/bin/env python3
"""Standalone verifier for fleetwarden audit logs: copy this one file anywhere.

It depends on the Python standard library and ``cryptography`` (for Ed25519) only, and
shares no code with fleetwarden, so an auditor can check what fleetwarden hands out with a
tool fleetwarden did not run. Usage::

    standalone_verify.py checkpoint KEY NOTE_FILE
    standalone_verify.py inclusion  KEY PROOF_JSON        # from `fleetwarden log prove --json`
    standalone_verify.py consistency KEY OLD_NOTE NEW_NOTE PROOF_JSON
    standalone_verify.py archive    KEY ARCHIVE_JSON      # from `fleetwarden log archive`

KEY is the log's verifier key ``name+keyid+base64(0x01||ed25519 public key)``, obtained
out of band (never from the material being checked). Exit status 0 means verified, 1 means
a check failed (the reason is printed), 2 means bad usage.

Formats: RFC 9162 Merkle tree (SHA-256, 0x00 leaf / 0x01 node prefixes), C2SP signed-note
checkpoints (origin, size, base64 root), leaves are the exact stored bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Fail(Exception):
    pass


def lh(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def nh(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def parse_key(text: str) -> tuple[str, bytes, bytes]:
    name, kid, blob = text.strip().split("+", 2)
    raw = base64.b64decode(blob)
    if len(raw) != 33 or raw[0] != 1:
        raise Fail("key is not an Ed25519 signed-note verifier key")
    want = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if want.hex() != kid:
        raise Fail("key id does not match the key")
    return name, want, raw[1:]


def check_note(key: str, text: str) -> tuple[str, int, bytes]:
    """Verify a signed checkpoint; return (origin, size, root)."""
    name, kid, pub = parse_key(key)
    body, sep, sigs = text.rpartition("\n\n")
    if not sep:
        raise Fail("not a signed note")
    body += "\n"
    ok = False
    for line in sigs.strip("\n").split("\n"):
        dash, signer, b64 = line.split(" ")
        blob = base64.b64decode(b64)
        if dash != "\u2014" or signer != name or blob[:4] != kid:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(blob[4:], body.encode())
        except InvalidSignature as exc:
            raise Fail(f"bad signature by {name}") from exc
        ok = True
    if not ok:
        raise Fail(f"checkpoint is not signed by {name}")
    lines = body[:-1].split("\n")
    root = base64.b64decode(lines[2])
    if len(root) != 32 or not lines[1].isdigit():
        raise Fail("malformed checkpoint body")
    return lines[0], int(lines[1]), root


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        raise Fail("index beyond tree size")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise Fail("proof too long")
        if fn & 1 or fn == sn:
            r = nh(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = nh(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Fail("proof too short")
    return r


def check_consistency(m: int, n: int, r1: bytes, r2: bytes, proof: list[bytes]) -> None:
    """RFC 9162 section 2.1.4.2."""
    if m == n:
        if proof or r1 != r2:
            raise Fail("equal sizes need equal roots and an empty proof")
        return
    if m == 0:
        return
    if m & (m - 1) == 0:
        proof = [r1, *proof]
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise Fail("proof too long")
        if fn & 1 or fn == sn:
            fr, sr = nh(c, fr), nh(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = nh(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != r1 or sr != r2:
        raise Fail("consistency proof does not hold")


def decompose(a: int, b: int) -> list[tuple[int, int]]:
    out = []
    while a < b:
        lv = (b - a).bit_length() - 1
        while a & ((1 << lv) - 1):
            lv -= 1
        out.append((lv, a >> lv))
        a += 1 << lv
    return out


def check_archive(key: str, obj: dict) -> str:  # type: ignore[type-arg]
    if obj.get("format") != "fleetwarden-auditlog-archive/v1":
        raise Fail("not a fleetwarden-auditlog-archive/v1 file")
    origin, size, root = check_note(key, obj["checkpoint"])
    start, end = obj["start"], obj["end"]
    cover = {(lv, ix): bytes.fromhex(h) for lv, ix, h in obj["left"] + obj["right"]}
    if sorted(cover) != sorted(decompose(0, start) + decompose(end, size)):
        raise Fail("boundary hashes do not match the range")
    if len(obj["entries"]) != end - start:
        raise Fail("entry count does not match the range")
    for i, e in enumerate(obj["entries"]):
        leaf = base64.b64decode(e["leaf"])
        if e["seq"] != start + i or not leaf.endswith(b',"seq":%d,"v":1}' % (start + i)):
            raise Fail(f"entry {start + i} is out of place")
        cover[(0, start + i)] = lh(leaf)

    def get(lv: int, ix: int) -> bytes:
        if (lv, ix) not in cover:
            if lv == 0:
                raise Fail(f"leaf {ix} not covered")
            cover[(lv, ix)] = nh(get(lv - 1, 2 * ix), get(lv - 1, 2 * ix + 1))
        return cover[(lv, ix)]

    parts = [get(lv, ix) for lv, ix in decompose(0, size)]
    acc = parts[-1]
    for h in reversed(parts[:-1]):
        acc = nh(h, acc)
    if acc != root:
        raise Fail("archive does not hash to the checkpoint root")
    return f"archive of {origin} entries {start}..{end - 1} verified against checkpoint {size}"


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[0]
    # the key is given inline or as a file holding it
    key = read(argv[1]).strip() if os.path.isfile(argv[1]) else argv[1]
    try:
        if cmd == "checkpoint":
            origin, size, root = check_note(key, read(argv[2]))
            print(f"checkpoint verified: {origin} size {size} root {root.hex()}")
        elif cmd == "inclusion":
            p = json.loads(read(argv[2]))
            origin, size, root = check_note(key, p["checkpoint"])
            leaf = p["leaf"].encode()
            if size != p["tree_size"] or base64.b64decode(p["leaf_hash"]) != lh(leaf):
                raise Fail("proof does not match its checkpoint or leaf")
            proof = [base64.b64decode(h) for h in p["inclusion_proof"]]
            if root_from_inclusion(p["seq"], size, lh(leaf), proof) != root:
                raise Fail("inclusion proof does not lead to the checkpoint root")
            print(f"entry {p['seq']} is in {origin} at size {size}")
        elif cmd == "consistency":
            _, m, r1 = check_note(key, read(argv[2]))
            _, n, r2 = check_note(key, read(argv[3]))
            p = json.loads(read(argv[4]))
            check_consistency(m, n, r1, r2, [base64.b64decode(h) for h in p["consistency_proof"]])
            print(f"checkpoint {n} extends checkpoint {m}: no fork")
        elif cmd == "archive":
            print(check_archive(key, json.loads(read(argv[2]))))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (Fail, ValueError, KeyError, IndexError, TypeError) as exc:
        print(f"FAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
