"""RFC 9162 hashing and proofs against the transparency-dev vectors, plus the forgeries they must reject."""

from __future__ import annotations

import pytest

from keel_audit.merkle import (
    EMPTY_ROOT,
    consistency_path,
    frontier_append,
    frontier_root,
    inclusion_path,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

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
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
HASHED = [leaf_hash(d) for d in LEAVES]


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH written straight from RFC 9162 section 2.1.1, to cross-check the streaming version."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_published_vectors(size: int) -> None:
    assert root_of(HASHED[:size]).hex() == ROOTS[size]


def test_frontier_append_gives_the_same_root_as_the_recursive_definition_for_every_size() -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]
    frontier: list[bytes] = []
    for size, leaf in enumerate(leaves):
        frontier_append(frontier, size, leaf)
        assert frontier_root(frontier) == _reference_root(leaves[: size + 1])
        assert len(frontier) == (size + 1).bit_count()


@pytest.mark.parametrize(
    ("index", "prefixes"),
    [(0, ["96a296d2", "5f083f0a", "6b47aaf2"]), (5, ["bc1a0643", "ca854ea1", "d37ee418"])],
)
def test_inclusion_paths_match_the_published_vectors(index: int, prefixes: list[str]) -> None:
    assert [h.hex()[:8] for h in inclusion_path(HASHED, index)] == prefixes


@pytest.mark.parametrize(
    ("old", "new", "prefixes"),
    [
        (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
        (2, 8, ["5f083f0a", "6b47aaf2"]),
        (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
        (2, 5, ["5f083f0a", "bc1a0643"]),
    ],
)
def test_consistency_paths_match_the_published_vectors(old: int, new: int, prefixes: list[str]) -> None:
    assert [h.hex()[:8] for h in consistency_path(HASHED, old, new)] == prefixes


def test_every_inclusion_proof_up_to_size_24_verifies_and_none_verifies_at_another_index() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(24)]
    for size in range(1, 25):
        root = root_of(leaves[:size])
        for index in range(size):
            path = inclusion_path(leaves, index, size)
            assert verify_inclusion(leaves[index], index, size, path, root)
            for other in range(size):
                if other != index:
                    assert not verify_inclusion(leaves[index], other, size, path, root)
            if size < 24:
                bigger_root = root_of(leaves[: size + 1])
                assert not verify_inclusion(leaves[index], index, size + 1, path, bigger_root)


def test_every_consistency_proof_up_to_size_24_verifies_and_wrong_roots_fail() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(24)]
    for new in range(1, 25):
        new_root = root_of(leaves[:new])
        for old in range(1, new + 1):
            old_root = root_of(leaves[:old])
            path = consistency_path(leaves, old, new)
            assert verify_consistency(old, new, old_root, new_root, path)
            if old < new:
                assert not verify_consistency(old, new, new_root, new_root, path)
                assert not verify_consistency(old, new, old_root, old_root, path)
                assert not verify_consistency(old, new, old_root, new_root, path[:-1])
                if len(set(path)) > 1:
                    assert not verify_consistency(old, new, old_root, new_root, list(reversed(path)))


def test_proof_negatives_are_rejected() -> None:
    root = root_of(HASHED)
    path = inclusion_path(HASHED, 3)
    assert not verify_inclusion(HASHED[3], 3, 8, [*path, HASHED[0]], root)  # one hash added
    assert not verify_inclusion(HASHED[3], 3, 8, path[:-1], root)  # one hash dropped
    assert not verify_inclusion(LEAVES[3], 3, 8, path, root)  # leaf data not hashed with 0x00
    assert not verify_inclusion(HASHED[3], 8, 8, path, root)  # index outside the tree
    interior = node_hash(HASHED[2], HASHED[3])
    assert not verify_inclusion(interior, 1, 4, inclusion_path(HASHED, 1, 4)[1:], root_of(HASHED[:4]))
    assert not verify_consistency(8, 4, root, root_of(HASHED[:4]), [])  # m > n (rollback)
    assert not verify_consistency(4, 4, root_of(HASHED[:4]), root_of(HASHED[:4]), [HASHED[0]])
    assert not verify_consistency(4, 8, root_of(HASHED[:4]), root, [])


def test_prepending_entries_to_an_old_tree_cannot_pass_as_a_consistent_extension() -> None:
    old = [leaf_hash(b"old-%d" % i) for i in range(4)]
    injected = [leaf_hash(b"injected-%d" % i) for i in range(4)]
    forged_new = injected + old
    forged_proof = [root_of(old), root_of(injected)]
    assert not verify_consistency(4, 8, root_of(old), root_of(forged_new), forged_proof)
    assert not verify_consistency(4, 8, root_of(old), root_of(forged_new), forged_proof[1:])
