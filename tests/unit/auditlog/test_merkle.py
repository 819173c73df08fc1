"""Known-answer tests: the RFC 6962/9162 vectors of transparency-dev/merkle (the Go
implementation used by Trillian, Tessera and sumdb) plus hypothesis round trips."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwarden.auditlog import merkle as m

LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
H = bytes.fromhex
# (1-based leaf, size, proof) and (size1, size2, proof) from transparency-dev/merkle
# proof/verify_test.go
INCLUSION = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
LH = [m.leaf_hash(x) for x in LEAVES]


def _range_hash(leaves: list[bytes], a: int, b: int) -> bytes:
    return m.root_from_leaf_hashes(leaves[a:b])


def test_empty_root_is_sha256_of_nothing() -> None:
    assert m.root_from_leaf_hashes([]) == H(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_roots(size: int) -> None:
    assert m.root_from_leaf_hashes(LH[:size]) == ROOTS[size - 1]


def test_domain_separation() -> None:
    assert m.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert m.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_vectors(leaf: int, size: int, proof: list[str]) -> None:
    want = [H(p) for p in proof]
    got = [_range_hash(LH, a, b) for a, b in m.inclusion_ranges(leaf - 1, size)]
    assert got == want
    m.verify_inclusion(leaf - 1, size, LH[leaf - 1], want, ROOTS[size - 1])
    # the corruptions transparency-dev tries: each must be refused
    bad = [
        (leaf - 2, size, LH[leaf - 1], want, ROOTS[size - 1]),
        (leaf, size, LH[leaf - 1], want, ROOTS[size - 1]),
        (leaf - 1, size * 2, LH[leaf - 1], want, ROOTS[size - 1]),
        (leaf - 1, size, m.leaf_hash(b"WrongLeaf"), want, ROOTS[size - 1]),
        (leaf - 1, size, LH[leaf - 1], [*want, ROOTS[size - 1]], ROOTS[size - 1]),
        (leaf - 1, size, LH[leaf - 1], [ROOTS[size - 1], *want], ROOTS[size - 1]),
        (leaf - 1, size, LH[leaf - 1], want[:-1], ROOTS[size - 1]),
        (leaf - 1, size, LH[leaf - 1], [*want, b""], ROOTS[size - 1]),
    ]
    for i, (idx, sz, lh, pr, root) in enumerate(bad):
        with pytest.raises(m.ProofError):
            m.verify_inclusion(idx, sz, lh, pr, root)
        assert i >= 0
    for i in range(len(want)):
        flipped = list(want)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        with pytest.raises(m.ProofError):
            m.verify_inclusion(leaf - 1, size, LH[leaf - 1], flipped, ROOTS[size - 1])


@pytest.mark.parametrize(("s1", "s2", "proof"), CONSISTENCY)
def test_consistency_vectors(s1: int, s2: int, proof: list[str]) -> None:
    want = [H(p) for p in proof]
    got = [_range_hash(LH, a, b) for a, b in m.consistency_ranges(s1, s2)]
    assert got == want
    r1, r2 = ROOTS[s1 - 1], ROOTS[s2 - 1]
    m.verify_consistency(s1, s2, r1, r2, want)
    for args in [
        (s1, s2, r2, r1, want),
        (s1, s2, r1, r2, []),
        (s1, s2, r1, r2, want[:-1]),
        (s1, s2, r1, r2, [*want, r1]),
        (s1 + 1, s2, r1, r2, want),
        (s1, s2 * 2, r1, r2, want),
    ]:
        with pytest.raises(m.ProofError):
            m.verify_consistency(*args)  # type: ignore[arg-type]


def test_trivial_consistency() -> None:
    m.verify_consistency(0, 5, b"x", ROOTS[4], [])
    m.verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(m.ProofError):
        m.verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(m.ProofError):
        m.verify_consistency(4, 3, ROOTS[3], ROOTS[2], [])


def test_compact_range_reports_every_complete_subtree() -> None:
    cr = m.CompactRange()
    nodes: list[tuple[int, int, bytes]] = []
    for h in LH:
        cr.append(h, nodes)
    got = {(lvl, i): h for lvl, i, h in nodes}
    assert got[(1, 0)] == H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")
    assert got[(1, 3)] == H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0")
    assert got[(2, 1)] == H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")
    assert got[(3, 0)] == ROOTS[7]
    assert len(nodes) == 7


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_proofs_round_trip(size: int, data: st.DataObject) -> None:
    leaves = [m.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    root = m.root_from_leaf_hashes(leaves)
    idx = data.draw(st.integers(0, size - 1))
    proof = [_range_hash(leaves, a, b) for a, b in m.inclusion_ranges(idx, size)]
    m.verify_inclusion(idx, size, leaves[idx], proof, root)
    old = data.draw(st.integers(0, size))
    cproof = [_range_hash(leaves, a, b) for a, b in m.consistency_ranges(old, size)]
    m.verify_consistency(old, size, m.root_from_leaf_hashes(leaves[:old]), root, cproof)
    # subtrees() decomposes proof ranges into aligned complete subtrees
    for a, b in m.inclusion_ranges(idx, size) + m.consistency_ranges(old, size):
        parts = m.subtrees(a, b)
        hashes = [m.root_from_leaf_hashes(leaves[i << lv : (i + 1) << lv]) for lv, i in parts]
        assert m.fold(hashes) == _range_hash(leaves, a, b)
