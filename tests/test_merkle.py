"""RFC 6962 / RFC 9162 Merkle hashing and proofs, against the transparency-dev test vectors."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xacthuc.domain.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "data" / "merkle-vectors"
INCLUSION_FILES = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY_FILES = sorted((VECTORS / "consistency").rglob("*.json"))

# The classic Certificate Transparency 8-leaf tree (README.md of the vectors).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOT_PREFIXES = [
    "6e340b9c",
    "fac54203",
    "aeb6bcfe",
    "d37ee418",
    "4e3bbb1f",
    "76e67dad",
    "ddb89be4",
    "5dc9da79",
]
CT_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _proof(probe: dict[str, Any]) -> list[bytes]:
    return [_b64(p) for p in probe["proof"] or []]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(VECTORS)) for p in paths]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _reference_mth(hashes: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written recursively as in the RFC."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(_reference_mth(hashes[:k]), _reference_mth(hashes[k:]))


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_vector_counts() -> None:
    """Every probe file of the copied vector set is collected."""
    assert 98 == len(INCLUSION_FILES)
    assert 98 == len(CONSISTENCY_FILES)


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_ids(INCLUSION_FILES))
def test_inclusion_vector(path: Path) -> None:
    """An inclusion probe verifies exactly when its file says wantErr is false."""
    probe = _load(path)
    args = (
        _b64(probe["leafHash"]),
        probe["leafIdx"],
        probe["treeSize"],
        _proof(probe),
        _b64(probe["root"]),
    )
    if path.name == "happy-path.json" or not probe["wantErr"]:
        assert False is probe["wantErr"]
        verify_inclusion(*args)
    else:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_ids(CONSISTENCY_FILES))
def test_consistency_vector(path: Path) -> None:
    """A consistency probe verifies exactly when its file says wantErr is false."""
    probe = _load(path)
    args = (
        probe["size1"],
        probe["size2"],
        _proof(probe),
        _b64(probe["root1"]),
        _b64(probe["root2"]),
    )
    if path.name == "happy-path.json" or not probe["wantErr"]:
        assert False is probe["wantErr"]
        verify_consistency(*args)
    else:
        with pytest.raises(ProofError):
            verify_consistency(*args)


def test_hash_primitives() -> None:
    """Leaf and node hashes use the 0x00 and 0x01 domain prefixes; the empty root is SHA-256("")."""
    assert hashlib.sha256(b"\x00abc").digest() == leaf_hash(b"abc")
    assert hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest() == node_hash(
        b"L" * 32, b"R" * 32
    )
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT == root_from_leaf_hashes([])


@pytest.mark.parametrize("size", range(1, 9))
def test_ct_tree_roots(size: int) -> None:
    """The classic CT tree of 8 leaves has the published root for every prefix size."""
    root = root_from_leaf_hashes([leaf_hash(d) for d in CT_LEAVES[:size]])
    assert CT_ROOT_PREFIXES[size - 1] == root.hex()[:8]


def test_ct_tree_full_root() -> None:
    """The full 8-leaf CT tree root matches the published hex digest."""
    assert CT_ROOT_8 == root_from_leaf_hashes([leaf_hash(d) for d in CT_LEAVES]).hex()


def test_ct_tree_happy_path_proofs_match_vectors() -> None:
    """Generated proofs for the CT tree equal the proofs in the happy-path vector files."""
    hashes = [leaf_hash(d) for d in CT_LEAVES]
    for path in INCLUSION_FILES:
        probe = _load(path)
        if path.name != "happy-path.json":
            continue
        expected = _proof(probe)
        assert expected == inclusion_proof(hashes, probe["leafIdx"], probe["treeSize"])
    for path in CONSISTENCY_FILES:
        probe = _load(path)
        if path.name != "happy-path.json":
            continue
        expected = _proof(probe)
        assert expected == consistency_proof(hashes, probe["size1"], probe["size2"])


def test_root_matches_reference_recursion() -> None:
    """The iterative root equals the RFC's recursive MTH for every size up to 70."""
    hashes = _leaves(70)
    for n in range(71):
        assert _reference_mth(hashes[:n]) == root_from_leaf_hashes(hashes[:n])


def test_compact_range_streams_roots() -> None:
    """CompactRange gives the same root as the batch computation after every append."""
    hashes = _leaves(70)
    compact = CompactRange()
    assert EMPTY_ROOT == compact.root()
    for n, h in enumerate(hashes, start=1):
        compact.append(h)
        assert n == compact.size
        assert root_from_leaf_hashes(hashes[:n]) == compact.root()


def test_compact_range_rejects_short_hash() -> None:
    """CompactRange accepts only 32-byte leaf hashes."""
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().append(b"short")


def test_generated_inclusion_proofs_verify() -> None:
    """For every tree size 1..40 and every index, the generated inclusion proof verifies."""
    hashes = _leaves(40)
    for n in range(1, 41):
        root = root_from_leaf_hashes(hashes[:n])
        for i in range(n):
            proof = inclusion_proof(hashes, i, n)
            verify_inclusion(hashes[i], i, n, proof, root)


def test_generated_consistency_proofs_verify() -> None:
    """For every 1 <= m <= n <= 40, the generated consistency proof verifies."""
    hashes = _leaves(40)
    roots = [root_from_leaf_hashes(hashes[:n]) for n in range(41)]
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = consistency_proof(hashes, m, n)
            verify_consistency(m, n, proof, roots[m], roots[n])
    assert [] == consistency_proof(hashes, 5, 5)


def test_flipped_bit_in_inclusion_proof_fails() -> None:
    """Flipping any single bit of any inclusion proof hash, leaf or root makes it fail."""
    hashes = _leaves(13)
    root = root_from_leaf_hashes(hashes)
    for i in range(13):
        proof = inclusion_proof(hashes, i, 13)
        for j in range(len(proof)):
            for bit in (0, 7, 100, 255):
                bad = [*proof[:j], _flip(proof[j], bit), *proof[j + 1 :]]
                with pytest.raises(ProofError):
                    verify_inclusion(hashes[i], i, 13, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(_flip(hashes[i], 3), i, 13, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(hashes[i], i, 13, proof, _flip(root, 3))


def test_flipped_bit_in_consistency_proof_fails() -> None:
    """Flipping any single bit of any consistency proof hash or either root makes it fail."""
    hashes = _leaves(21)
    roots = [root_from_leaf_hashes(hashes[:n]) for n in range(22)]
    for m in range(1, 21):
        proof = consistency_proof(hashes, m, 21)
        for j in range(len(proof)):
            bad = [*proof[:j], _flip(proof[j], 42), *proof[j + 1 :]]
            with pytest.raises(ProofError):
                verify_consistency(m, 21, bad, roots[m], roots[21])
        with pytest.raises(ProofError):
            verify_consistency(m, 21, proof, _flip(roots[m], 0), roots[21])
        with pytest.raises(ProofError):
            verify_consistency(m, 21, proof, roots[m], _flip(roots[21], 0))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=300))
def test_random_proofs_verify_and_reject_tampering(data: st.DataObject, n: int) -> None:
    """Random inclusion and consistency proofs verify, and a flipped bit is always caught."""
    hashes = _leaves(n)
    root = root_from_leaf_hashes(hashes)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = inclusion_proof(hashes, i, n)
    verify_inclusion(hashes[i], i, n, proof, root)
    m = data.draw(st.integers(min_value=1, max_value=n))
    cproof = consistency_proof(hashes, m, n)
    old_root = root_from_leaf_hashes(hashes[:m])
    verify_consistency(m, n, cproof, old_root, root)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    if proof:
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        with pytest.raises(ProofError):
            verify_inclusion(
                hashes[i], i, n, [*proof[:j], _flip(proof[j], bit), *proof[j + 1 :]], root
            )
    if cproof:
        j = data.draw(st.integers(min_value=0, max_value=len(cproof) - 1))
        bad = [*cproof[:j], _flip(cproof[j], bit), *cproof[j + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(m, n, bad, old_root, root)


def test_proofs_reject_wrong_hash_lengths() -> None:
    """Hashes that are not 32 bytes are rejected even where the arithmetic would pass."""
    hashes = _leaves(4)
    root = root_from_leaf_hashes(hashes)
    proof = inclusion_proof(hashes, 1, 4)
    with pytest.raises(ProofError, match="32 bytes"):
        verify_inclusion(hashes[1], 1, 4, [*proof, b""], root)
    with pytest.raises(ProofError, match="32 bytes"):
        verify_inclusion(hashes[1] + b"\x00", 1, 4, proof, root)
    with pytest.raises(ProofError, match="32 bytes"):
        verify_consistency(1, 4, [b"x" * 31], hashes[0], root)


def test_consistency_from_empty_tree_rejected() -> None:
    """A consistency proof from size 0 is rejected, even with an empty proof."""
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 3, [], EMPTY_ROOT, root_from_leaf_hashes(_leaves(3)))


def test_generation_rejects_bad_arguments() -> None:
    """Proof generation refuses out-of-range indexes and sizes."""
    hashes = _leaves(4)
    with pytest.raises(ValueError, match="leaf index"):
        inclusion_proof(hashes, 4, 4)
    with pytest.raises(ValueError, match="tree size"):
        inclusion_proof(hashes, 0, 5)
    with pytest.raises(ValueError, match="size1"):
        consistency_proof(hashes, 0, 4)
    with pytest.raises(ValueError, match="size1"):
        consistency_proof(hashes, 3, 2)
