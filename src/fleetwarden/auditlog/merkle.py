"""RFC 9162 (Certificate Transparency v2, same tree as RFC 6962) Merkle tree hashing.

Invariants (RFC 9162 section 2.1):
- leaf hash  = SHA-256(0x00 || leaf bytes), node hash = SHA-256(0x01 || left || right):
  the one-byte prefixes separate the two domains, so no leaf can pose as an interior node;
- MTH of n > 1 leaves splits at k, the largest power of two strictly below n;
- leaf indexes are 0-based; a tree of size n holds leaves 0 .. n-1.

Everything here is pure (no storage): proof *generation* is expressed as a list of leaf
ranges ``[a, b)`` whose subtree hashes form the proof, so the store can fetch exactly those
hashes however it keeps them. Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2
step by step (the same shape as sigstore-python's and transparency-dev's verifiers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not verify (wrong length, wrong hashes, impossible sizes)."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves (iterative, so deep trees do not recurse)."""
    cr = CompactRange()
    for h in hashes:
        cr.append(h)
    return cr.root()


class CompactRange:
    """The right edge of a growing tree: one hash per set bit of the size.

    Appending is O(log n) amortised O(1); ``root()`` folds the peaks right to left, which
    is exactly MTH for a tree of ``size`` leaves. ``on_node`` (if given) is told of every
    complete subtree (level, index, hash) as it is completed, so a store can persist them.
    """

    __slots__ = ("on_node", "peaks", "size")

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        if len(peaks) != bin(size).count("1"):
            raise ValueError("a compact range needs one peak per set bit of its size")
        self.size = size
        #: peaks, biggest (leftmost) subtree first
        self.peaks: list[bytes] = list(peaks)

    def append(
        self, h: bytes, nodes: list[tuple[int, int, bytes]] | None = None, stride: int = 1
    ) -> None:
        """Add a leaf hash; report completed subtrees whose level is a multiple of
        ``stride`` into ``nodes``."""
        size = self.size
        level = 0
        peaks = self.peaks
        # Merge while the new subtree's sibling on the left is complete at the same level.
        while size & (1 << level):
            h = hashlib.sha256(b"\x01" + peaks.pop() + h).digest()
            level += 1
            if nodes is not None and level % stride == 0:
                nodes.append((level, size >> level, h))
        peaks.append(h)
        self.size = size + 1

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        acc = self.peaks[-1]
        for p in reversed(self.peaks[:-1]):
            acc = hashlib.sha256(b"\x01" + p + acc).digest()
        return acc

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.peaks)


def subtrees(a: int, b: int) -> list[tuple[int, int]]:
    """Decompose the leaf range ``[a, b)`` (a aligned as in a proof) into complete
    subtrees, left to right, as (level, index) pairs: subtree (l, i) covers leaves
    ``[i << l, (i + 1) << l)``. MTH(D[a:b]) folds their hashes right to left."""
    out: list[tuple[int, int]] = []
    while a < b:
        n = b - a
        level = n.bit_length() - 1
        # the biggest complete subtree starting at a that fits and is aligned
        while a & ((1 << level) - 1):
            level -= 1
        out.append((level, a >> level))
        a += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Fold complete-subtree hashes (left to right order) into the range's MTH."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 PATH(m, D[n]) as leaf ranges, bottom-up (the order of the proof)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = split_point(hi - lo)
        if m < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m = lo + k, m - k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """RFC 9162 PROOF(m, D[n]) (SUBPROOF with b = true) as leaf ranges, in proof order."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to {new}")
    if old in (0, new):
        return []
    out: list[tuple[int, int]] = []

    def sub(m: int, lo: int, hi: int, b: bool) -> None:
        n = hi - lo
        if m == n:
            if not b:
                out.append((lo, hi))
            return
        k = split_point(n)
        if m <= k:
            sub(m, lo, lo + k, b)
            out.append((lo + k, hi))
        else:
            sub(m - k, lo + k, hi, False)
            out.append((lo, lo + k))

    sub(old, 0, new, True)
    return out


def _check_hashes(proof: Iterable[bytes]) -> list[bytes]:
    out = list(proof)
    for h in out:
        if len(h) != HASH_SIZE:
            raise ProofError("proof element is not a 32-byte hash")
    return out


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root an inclusion proof implies (raise if malformed)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError("leaf hash is not 32 bytes")
    path = _check_hashes(proof)
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2; raise :class:`ProofError` unless the proof holds."""
    path = _check_hashes(proof)
    if old < 0 or new < old:
        raise ProofError(f"sizes go backwards ({old} -> {new})")
    if old == new:
        if path:
            raise ProofError("proof must be empty for equal sizes")
        if old_root != new_root:
            raise ProofError("same size, different roots: the log forked")
        return
    if old == 0:
        if path:
            raise ProofError("proof must be empty from the empty tree")
        return
    if not path:
        raise ProofError("consistency proof is empty")
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node
        path = [old_root, *path]
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not match the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not match the new root")


def leaf_ranges_hash(leaves: Sequence[bytes], a: int, b: int) -> bytes:
    """MTH of leaf hashes ``leaves[a:b]`` (reference helper for tests and archives)."""
    return root_from_leaf_hashes(leaves[a:b])
