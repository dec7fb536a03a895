"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and proof verification.

The tree is the Certificate Transparency Merkle Tree Hash (MTH): a leaf hashes as
SHA-256(0x00 || data), an interior node as SHA-256(0x01 || left || right), and a tree of
n > 1 leaves splits at k, the largest power of two smaller than n. The empty tree hashes to
SHA-256 of the empty string.

Generation works on the full list of leaf hashes (the log owner has them), or on a
`MerkleCache` of them that also keeps every complete subtree's hash; both take the subtrees
a proof needs from `inclusion_ranges` / `consistency_ranges`. Verification
follows the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2 and raises `ProofError` on
any failure, including hashes that are not 32 bytes long and consistency proofs from the
empty tree (which prove nothing). `CompactRange` folds a stream of leaf hashes into the
root in O(log n) memory, for checking a large export against a signed tree head.

Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleCache",
    "ProofError",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A Merkle inclusion or consistency proof failed to verify or was malformed."""


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """Return k, the largest power of two with k < n (n must be at least 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes] | Iterable[bytes]) -> bytes:
    """Return the Merkle Tree Hash of the given leaf hashes (EMPTY_ROOT for none).

    Linear time and O(log n) memory: the leaf hashes are folded through a `CompactRange`.
    """
    compact = CompactRange()
    for h in hashes:
        compact.append(h)
    return compact.root()


def _subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """Return MTH(D[start:end]) for a non-empty range."""
    compact = CompactRange()
    for i in range(start, end):
        compact.append(leaf_hashes[i])
    return compact.root()


def _check_generation_args(leaf_hashes: Sequence[bytes], tree_size: int) -> None:
    if tree_size < 0 or tree_size > len(leaf_hashes):
        raise ValueError(f"tree size {tree_size} outside 0..{len(leaf_hashes)}")


def inclusion_ranges(index: int, tree_size: int) -> list[tuple[int, int]]:
    """The leaf ranges [start, end) whose roots form the RFC 9162 section 2.1.3.1 inclusion
    proof PATH(index, D[0:tree_size]), from the leaf's sibling upwards (proof order).

    Every range is a subtree of the tree: `start` is a multiple of a power of two at least
    `end - start` (what `MerkleCache.range_root` needs). Raises `ValueError` unless
    0 <= index < tree_size.
    """
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} outside 0..{tree_size - 1}")
    # Walk top-down, collecting sibling subtrees; reverse to get bottom-up order.
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, tree_size, index
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if m < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m = start + k, m - k
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form the RFC 9162 section 2.1.4.1 consistency proof
    PROOF(size1, D[0:size2]), in proof order; subtrees, as in `inclusion_ranges`.

    Equal sizes give no range. Raises `ValueError` unless 0 < size1 <= size2: a proof from
    the empty tree is meaningless and verifiers reject it.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"consistency needs 0 < size1 <= size2, got {size1} and {size2}")
    # SUBPROOF(m, D[start:end], b), unrolled: walk top-down, collect, reverse.
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, size2, size1, True
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, tree_size: int) -> list[bytes]:
    """Return the RFC 9162 section 2.1.3.1 inclusion proof PATH(index, D[0:tree_size]).

    The proof is ordered from the leaf's sibling upwards, as the verifier consumes it.
    Raises `ValueError` if the index or tree size is out of range.
    """
    _check_generation_args(leaf_hashes, tree_size)
    return [_subtree_root(leaf_hashes, a, b) for a, b in inclusion_ranges(index, tree_size)]


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    """Return the RFC 9162 section 2.1.4.1 consistency proof PROOF(size1, D[0:size2]).

    Equal sizes give the empty proof. Raises `ValueError` unless 0 < size1 <= size2 <=
    len(leaf_hashes): a proof from the empty tree is meaningless and verifiers reject it.
    """
    _check_generation_args(leaf_hashes, size2)
    return [_subtree_root(leaf_hashes, a, b) for a, b in consistency_ranges(size1, size2)]


def _require_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes")


def _require_proof(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        _require_hash(p, f"proof[{i}]")


def _require_size(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer")


def _hashes_match(computed: bytes, expected: bytes, what: str) -> None:
    if not hmac.compare_digest(computed, expected):
        raise ProofError(f"calculated {what} does not match the expected one")


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `proof` binds `leaf_hash` at `index` to `root` of a tree of `tree_size`.

    RFC 9162 section 2.1.3.2. Returns None on success; raises `ProofError` otherwise.
    """
    _require_size(index, "leaf index")
    _require_size(tree_size, "tree size")
    if index >= tree_size:
        raise ProofError(f"leaf index {index} is not below tree size {tree_size}")
    _require_hash(leaf_hash, "leaf hash")
    _require_hash(root, "root")
    _require_proof(proof)

    fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    _hashes_match(r, root, "root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of `size2` with `root2` extends the tree of `size1` with `root1`.

    RFC 9162 section 2.1.4.2, made stricter: size1 == 0 is rejected (a proof from the empty
    tree proves nothing); equal sizes need an empty proof and equal roots (only the two roots
    are compared then); otherwise every hash must be 32 bytes. Raises `ProofError`.
    """
    _require_size(size1, "size1")
    _require_size(size2, "size2")
    if size1 > size2:
        raise ProofError(f"size1 {size1} is greater than size2 {size2}")
    if size1 == 0:
        raise ProofError("consistency from the empty tree is not checkable")
    if size1 == size2:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        _hashes_match(root1, root2, "root")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    _require_hash(root1, "root1")
    _require_hash(root2, "root2")
    _require_proof(proof)

    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is an exact power of two: the old root is a node
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
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
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    _hashes_match(fr, root1, "root1")
    _hashes_match(sr, root2, "root2")


class CompactRange:
    """Incremental Merkle Tree Hash of a growing list of leaf hashes, O(log n) memory.

    Keeps the roots of the perfect subtrees covering the leaves so far (one per set bit of
    the size, largest first). `root()` folds them right to left, which is exactly the
    RFC 6962 split at the largest power of two.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaf hashes appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (not raw leaf data: use `leaf_hash()` first)."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        h = bytes(leaf_hash)
        n = self._size
        while n & 1:
            h = node_hash(self._stack.pop(), h)
            n >>= 1
        self._stack.append(h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append every leaf hash in order."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """Return the Merkle Tree Hash of the leaves appended so far."""
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r


class MerkleCache:
    """The leaf hashes of one log and the hashes of all its complete power-of-two subtrees.

    `levels[h]` holds, packed 32 bytes each, the hash of every complete subtree of 2**h
    leaves aligned at a multiple of 2**h. Appending a leaf adds at most log2(n) nodes.
    Proofs are the same subtrees as `inclusion_proof` / `consistency_proof`, read from the
    levels instead of rehashed from the leaves: O(log^2 n) hash operations per proof.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (not record bytes: `merkle.leaf_hash` first)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        index = self.size
        self._levels[0] += leaf
        level, h = 0, bytes(leaf)
        while index & 1:  # this node completes a pair: its parent is complete too
            h = node_hash(self._node(level, index - 1), h)
            level, index = level + 1, index >> 1
            if level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level] += h

    def _node(self, level: int, index: int) -> bytes:
        at = index * HASH_SIZE
        return bytes(self._levels[level][at : at + HASH_SIZE])

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self._node(0, index)

    def range_root(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); `start` must be a multiple of a power of two >= end - start,
        which holds for the whole tree and for every subtree a proof needs."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range {start}..{end} outside 0..{self.size}")
        if start == end:
            return EMPTY_ROOT
        pieces: list[bytes] = []
        pos, n = start, end - start
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                if pos & ((1 << level) - 1):
                    raise ValueError(f"range {start}..{end} is not aligned")
                pieces.append(self._node(level, pos >> level))
                pos += 1 << level
        root = pieces[-1]
        for piece in reversed(pieces[:-1]):
            root = node_hash(piece, root)
        return root

    def root(self, tree_size: int | None = None) -> bytes:
        return self.range_root(0, self.size if tree_size is None else tree_size)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        if not 0 <= index < tree_size <= self.size:
            raise ValueError(f"need 0 <= index < tree size <= {self.size}")
        return [self.range_root(a, b) for a, b in inclusion_ranges(index, tree_size)]

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        if not 0 < size1 <= size2 <= self.size:
            raise ValueError(f"need 0 < size1 <= size2 <= {self.size}")
        return [self.range_root(a, b) for a, b in consistency_ranges(size1, size2)]
