"""Offline verification of an audit-log export against signed checkpoints (`xacthuc audit verify`).

Inputs: the export (JSON Lines from ExportAuditRecords: `{"index", "leaf_hash", "record"}`),
a checkpoint (C2SP signed note) and the log's verifier key; optionally older checkpoints.
Nothing is fetched: the export, the notes and the key are all that is trusted or checked.

One streaming pass, O(log n) memory (a `CompactRange` per root to rebuild):

1. The checkpoint's signature is checked with the key (`checkpoint.open_note`); its origin
   must be the key's name, and older checkpoints must verify with the same key and origin.
2. Each line, in order, must be self-consistent; the first line that is not is reported as
   the first bad record, with its index:
   - the line is a JSON object with an integer `index` and a string `record`: otherwise it
     was cut (a truncated last line) or changed;
   - `index` equals the line's position: a removed record shows as the next record one line
     early, a swapped pair or a duplicated record as an index out of order;
   - `record` hashes to the line's `leaf_hash` (the hash the server computed when it first
     read the record): a changed byte anywhere in the record shows here, in the line of
     that record, even when the result is still valid JSON;
   - `record` is a JSON object whose `seq` is its index and whose `platform` is the log's
     (from the origin): catches records moved between positions or logs even when the
     `index` and `leaf_hash` fields were rewritten to match;
   - its `time` (RFC 3339) is not before the previous record's: the service never writes a
     record older than the one before it, so a backdated record shows here, with its index,
     even when its leaf hash was rewritten to match.
   An ERASED record (P10 retention or an erasure request, Law 91/2025) is exported as
   `{"index", "leaf_hash", "erased": true}` without its record: only its position is
   checked and its leaf hash is taken as given (the content it hashed is gone, which is the
   point); it has no time, so the time order is checked across it. The verdict counts
   erased records (`Verdict.erased`) and says how many there were: an erasure is itself an
   audit record (`records_erased`), so the export shows who erased what and when.
3. The leaf hashes are folded into the tree; at each checkpoint's tree size the root is
   compared with the signed one. An export shorter than the checkpoint is truncated: the
   first missing index is reported.
4. For each older checkpoint the RFC 9162 consistency proof older -> newer is recomputed
   from the export's leaves (the subtree roots it needs are accumulated in the same pass)
   and verified with `merkle.verify_consistency` against both signed roots.
5. Records past the checkpoint's tree size are covered by no signature: anyone can append a
   self-consistent line (a forged attestation with a correct leaf hash). The verdict speaks
   only for records 0..size-1, so such a tail fails verification, naming its first index,
   unless `allow_unverified_tail`: then each tail record is listed as UNVERIFIED (one line
   each, kept in memory; not with `list_unverified=False`) and the verdict is that of the
   covered prefix. `on_covered` sees each covered record as it streams by (what
   `xacthuc audit report --checkpoint` counts, once the verdict is OK).

What cannot be pinpointed offline: an export whose records were changed together with their
`leaf_hash` fields (or whose `leaf_hash` fields were dropped) still fails at step 3 (the
root does not match), but the changed record is only narrowed to the range between the
largest checkpoint size whose root still matches and the smallest that does not. Locating it
exactly needs reference hashes that the export cannot forge: inclusion or consistency proofs
from the server against the same signed checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xacthuc.domain.checkpoint import Checkpoint, CheckpointError, NoteError, open_note, parse_vkey
from xacthuc.domain.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_ranges,
    leaf_hash,
    verify_consistency,
)


class UsageError(ValueError):
    """The inputs are not what verification needs (exit status 2)."""


@dataclass
class Verdict:
    """The outcome: `ok`, and when not, the first bad record's index if it is known.

    `first_uncovered_index` is the checkpoint's tree size when the export holds records past
    it; `unverified` lists them when they were allowed (`allow_unverified_tail`). `erased`
    counts the records exported as erased (their leaf hashes only)."""

    ok: bool
    summary: str
    first_bad_index: int | None = None
    records: int = 0
    tree_size: int = 0
    origin: str = ""
    notes: list[str] = field(default_factory=list)
    first_uncovered_index: int | None = None
    unverified: list[str] = field(default_factory=list)
    erased: int = 0

    def text(self) -> str:
        return "\n".join([self.summary, *self.notes, *self.unverified])


class _BadLine(Exception):
    pass


class _ProofAccumulator:
    """Accumulates the subtree roots of one consistency proof while the leaves stream by."""

    def __init__(self, size1: int, size2: int) -> None:
        self.ranges = consistency_ranges(size1, size2)
        self._order = sorted(range(len(self.ranges)), key=lambda j: self.ranges[j][0])
        self._parts = [CompactRange() for _ in self.ranges]
        self._at = 0

    def add(self, index: int, leaf: bytes) -> None:
        while self._at < len(self._order) and self.ranges[self._order[self._at]][1] <= index:
            self._at += 1
        if self._at < len(self._order):
            j = self._order[self._at]
            if self.ranges[j][0] <= index:
                self._parts[j].append(leaf)

    def proof(self) -> list[bytes]:
        return [part.root() for part in self._parts]


def _open(note: str, name: str, key: Ed25519PublicKey, what: str) -> Checkpoint:
    try:
        body = open_note(note, name, key)
        checkpoint = Checkpoint.parse(body)
    except (NoteError, CheckpointError) as e:
        raise _BadCheckpoint(f"{what}: {e}") from None
    if checkpoint.origin != name:
        raise _BadCheckpoint(f"{what}: origin {checkpoint.origin!r} is not the key's log {name!r}")
    return checkpoint


class _BadCheckpoint(Exception):
    pass


def _time(fields: dict[str, Any], position: int) -> datetime:
    text = fields.get("time")
    try:
        if not isinstance(text, str):
            raise ValueError
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _BadLine(f"record {position} has no valid RFC 3339 `time`") from None
    if when.tzinfo is None:
        raise _BadLine(f"record {position} has a `time` without an offset")
    return when


def _check_line(
    position: int, line: bytes, platform: str
) -> tuple[bytes, str, dict[str, Any]] | bytes:
    """The leaf hash, record and record fields of a self-consistent line at `position`, or
    only the leaf hash of an erased record; raises _BadLine otherwise."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise _BadLine(f"line {position + 1} is not a JSON object (cut or changed)") from None
    index = obj.get("index") if isinstance(obj, dict) else None
    erased = isinstance(obj, dict) and obj.get("erased") is True and "record" not in obj
    record = obj.get("record") if isinstance(obj, dict) else None
    if (
        not isinstance(index, int)
        or isinstance(index, bool)
        or not (erased or isinstance(record, str))
    ):
        raise _BadLine(f"line {position + 1} lacks an integer `index` or a string `record`")
    if index > position:
        raise _BadLine(f"record {position} is missing: line {position + 1} holds record {index}")
    if index < position:
        raise _BadLine(
            f"line {position + 1} holds record {index} again or out of order, "
            f"where record {position} belongs"
        )
    if erased:
        given = obj.get("leaf_hash")
        try:
            leaf = bytes.fromhex(given) if isinstance(given, str) else b""
        except ValueError:
            leaf = b""
        if len(leaf) != 32:
            raise _BadLine(f"erased record {position} lacks its 32-byte `leaf_hash`")
        return leaf
    assert isinstance(record, str)
    try:
        leaf = leaf_hash(record.encode("utf-8"))
    except UnicodeEncodeError:
        raise _BadLine(f"record {position} is not valid UTF-8") from None
    claimed = obj.get("leaf_hash")
    if claimed is not None and claimed != leaf.hex():
        raise _BadLine(
            f"record {position} does not hash to the leaf hash exported with it: "
            "the record (or its leaf hash) was changed"
        )
    try:
        fields = json.loads(record)
    except ValueError:
        raise _BadLine(f"record {position} is not valid JSON") from None
    if not isinstance(fields, dict):
        raise _BadLine(f"record {position} is not a JSON object")
    seq = fields.get("seq")
    if seq != position:
        raise _BadLine(f"record {position} carries seq {seq}: it was moved, removed or replaced")
    if fields.get("platform") != platform:
        raise _BadLine(f"record {position} belongs to platform {fields.get('platform')!r}")
    return leaf, record, fields


def verify_export(
    lines: Iterable[bytes],
    checkpoint_note: str,
    verifier_key: str,
    older_notes: Sequence[str] = (),
    *,
    allow_unverified_tail: bool = False,
    list_unverified: bool = True,
    on_covered: Callable[[int, str], None] | None = None,
) -> Verdict:
    """Verify an export (an iterable of its lines) as the module docstring describes.

    Raises UsageError for inputs that cannot be used at all (a malformed verifier key, an
    "older" checkpoint that is larger than the checkpoint)."""
    try:
        name, key = parse_vkey(verifier_key.strip())
    except NoteError as e:
        raise UsageError(f"not a verifier key: {e}") from None
    try:
        newest = _open(checkpoint_note, name, key, "checkpoint")
        olders = [
            _open(note, name, key, f"older checkpoint #{i + 1}")
            for i, note in enumerate(older_notes)
        ]
    except _BadCheckpoint as e:
        return Verdict(False, f"FAILED: {e}")
    size = newest.tree_size
    for older in olders:
        if older.tree_size > size:
            raise UsageError(
                f"--older-checkpoint has tree size {older.tree_size}, larger than the "
                f"checkpoint's {size}: give the newest one as --checkpoint"
            )
    platform = name.rsplit("/", 1)[-1]
    probe_sizes = {size} | {o.tree_size for o in olders}
    prefix_roots: dict[int, bytes] = {0: EMPTY_ROOT}
    accumulators = [
        _ProofAccumulator(o.tree_size, size) if 0 < o.tree_size < size else None for o in olders
    ]
    compact = CompactRange()
    count = 0
    erased = 0
    previous: tuple[datetime, str] | None = None
    unverified: list[str] = []

    def _fold(position: int, leaf: bytes) -> None:
        """A covered leaf into the roots and proofs being rebuilt."""
        if position >= size:
            return
        compact.append(leaf)
        for acc in accumulators:
            if acc is not None:
                acc.add(position, leaf)
        if compact.size in probe_sizes:
            prefix_roots[compact.size] = compact.root()

    for position, raw in enumerate(lines):
        line = raw[:-1] if raw.endswith(b"\n") else raw
        try:
            checked = _check_line(position, line, platform)
            if isinstance(checked, bytes):  # an erased record: its leaf hash only
                _fold(position, checked)
                erased += 1
                count += 1
                if position >= size and allow_unverified_tail and list_unverified:
                    unverified.append(f"UNVERIFIED erased record {position} (past the checkpoint)")
                continue
            leaf, record, fields = checked
            when = _time(fields, position)
            if previous is not None and when < previous[0]:
                raise _BadLine(
                    f"record {position} has time {fields['time']}, before record "
                    f"{position - 1}'s {previous[1]}"
                )
        except _BadLine as e:
            return Verdict(
                False,
                f"FAILED: first bad record index {position}: {e}",
                first_bad_index=position,
                records=count,
                tree_size=size,
                origin=name,
            )
        previous = (when, fields["time"])
        count += 1
        _fold(position, leaf)
        if position < size:
            if on_covered is not None:
                on_covered(position, record)
        elif allow_unverified_tail and list_unverified:
            unverified.append(
                f"UNVERIFIED record {position}: {fields.get('event')} at {fields['time']} "
                "(past the checkpoint: no signature covers it)"
            )

    def matches(c: Checkpoint) -> bool | None:
        """Whether the export's root at c's size is c's root (None: the export is shorter)."""
        root = prefix_roots.get(c.tree_size)
        return None if root is None else root == c.root_hash

    verdict = Verdict(True, "", records=count, tree_size=size, origin=name, erased=erased)
    if erased:
        verdict.notes.append(
            f"{erased} erased record(s): their contents were removed (retention or an erasure "
            "request, each itself an audit record); their leaf hashes still bind the tree"
        )
    if not matches(newest):
        signed = [newest, *olders]
        bad = sorted(c.tree_size for c in signed if c.tree_size and matches(c) is False)
        verdict.ok = False
        if bad:
            hi = bad[0]
            lo = max((c.tree_size for c in signed if matches(c) and c.tree_size < hi), default=0)
            verdict.summary = (
                f"FAILED: root mismatch at tree size {hi}: the export's records 0..{hi - 1} do "
                f"not hash to the signed root; a record at an index in {lo}..{hi - 1} was "
                "changed together with its leaf hash, so it cannot be pinpointed offline"
            )
        else:
            verdict.first_bad_index = count
            verdict.summary = (
                f"FAILED: first bad record index {count}: the export is truncated: it ends "
                f"after {count} records but the checkpoint covers {size}"
            )
        return verdict
    for older, acc in zip(olders, accumulators, strict=True):
        if older.tree_size == 0:
            verdict.notes.append(
                "older checkpoint of tree size 0: the empty tree, nothing to check"
            )
            continue
        proof = acc.proof() if acc is not None else []
        try:
            verify_consistency(older.tree_size, size, proof, older.root_hash, newest.root_hash)
        except ProofError as e:
            verdict.ok = False
            verdict.summary = (
                f"FAILED: the older checkpoint of tree size {older.tree_size} is not consistent "
                f"with the checkpoint of tree size {size} ({e}); the export matches the newer "
                f"one, so the log's records 0..{older.tree_size - 1} were rewritten between them"
            )
            return verdict
        verdict.notes.append(
            f"older checkpoint of tree size {older.tree_size}: consistent with tree size {size} "
            "(RFC 9162 consistency proof recomputed from the export)"
        )
    verdict.summary = (
        f"OK: {name}: records 0..{size - 1} match the checkpoint "
        f"(tree size {size}, signature valid)"
        if size
        else f"OK: {name}: the checkpoint is of the empty tree"
    )
    if count > size:
        verdict.first_uncovered_index = size
        tail = records_text(size, count)
        if allow_unverified_tail:
            verdict.notes.append(
                f"{tail} past the checkpoint: no signature covers "
                f"{'it' if count - size == 1 else 'them'}, UNVERIFIED"
            )
            verdict.unverified = unverified
        else:
            verdict.ok = False
            covered = f"records 0..{size - 1} match it" if size else "it is of the empty tree"
            verdict.summary = (
                f"FAILED: record {size} is not covered by the checkpoint (tree size {size}): "
                f"the export holds {count - size} record(s) past it, {size}..{count - 1}, "
                f"which no signature covers ({covered}). Cut the export at the checkpoint "
                "(xacthuc audit export --checkpoint), verify against a later checkpoint, or "
                "pass --allow-unverified-tail to list them as UNVERIFIED"
            )
    return verdict


def records_text(start: int, end: int) -> str:
    """'record 4 is' or 'records 4..9 are': the records start..end-1 (end > start)."""
    return f"record {start} is" if end - start == 1 else f"records {start}..{end - 1} are"
