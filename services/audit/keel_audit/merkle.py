"""RFC 9162 Merkle tree hashing, compact frontiers, inclusion and consistency proofs.

Leaf and node hashes are domain separated (0x00 / 0x01) as RFC 9162 section 2.1.1 requires. Proof
verifiers derive the proof's shape from the index and sizes they are given, never from the prover,
which is what rejects relocated or prepended histories (the pymerkle 6.x lesson in the anchors doc).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_sha256 = hashlib.sha256

EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def frontier_append(frontier: list[bytes], size: int, leaf: bytes) -> None:
    """Add ``leaf`` to the compact frontier of a tree with ``size`` leaves, in place.

    The frontier holds the roots of the perfect subtrees of the tree, left to right; their sizes are the
    set bits of the tree size, so they need not be stored.
    """
    frontier.append(leaf)
    while size & 1:
        right = frontier.pop()
        frontier[-1] = node_hash(frontier[-1], right)
        size >>= 1


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    if not frontier:
        return EMPTY_ROOT
    root = frontier[-1]
    for left in reversed(frontier[:-1]):
        root = node_hash(left, root)
    return root


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, in O(log n) memory."""
    frontier: list[bytes] = []
    for size, leaf in enumerate(leaves):
        frontier_append(frontier, size, leaf)
    return frontier_root(frontier)


def _subtree(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_subtree(leaves, lo, lo + k), _subtree(leaves, lo + k, hi))


def inclusion_path(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1 over hashed leaves."""
    size = len(leaves) if size is None else size
    if not 0 <= index < size <= len(leaves):
        raise ValueError(f"no leaf {index} in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    # Walk down from the root collecting siblings, then reverse: the verifier consumes leaf to root.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            path.append(_subtree(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree(leaves, lo, lo + k))
            lo = lo + k
    path.reverse()
    return path


def consistency_path(leaves: Sequence[bytes], old_size: int, new_size: int | None = None) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1 over hashed leaves."""
    new_size = len(leaves) if new_size is None else new_size
    if not 0 < old_size <= new_size <= len(leaves):
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size == new_size:
        return []

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [_subtree(leaves, lo, hi)]
        k = _split(n)
        if m <= k:
            return [*subproof(m, lo, lo + k, complete), _subtree(leaves, lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), _subtree(leaves, lo, lo + k)]

    return subproof(old_size, 0, new_size, True)


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2; ``leaf`` is the leaf hash, not the leaf data."""
    if not 0 <= index < size:
        return False
    fn, sn, result = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if old_size == new_size:
        return not path and old_root == new_root
    if not 0 < old_size < new_size or not path:
        return False
    nodes = ([old_root] if old_size & (old_size - 1) == 0 else []) + list(path)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
