"""Where the audit log's signed checkpoints are kept, one history per platform (the port).

The latest stored checkpoint decides what may be signed next: `append` is a compare-and-set
that stores a new checkpoint only if the latest stored one still has the tree size the
caller built on (and the new size is larger). Two replicas that race to sign therefore
never publish two checkpoints one after the other that the second did not check against
the first: the loser re-reads the winner's checkpoint instead.
Entries are JSON: `{"size": n, "root": <base64>, "time": <unix seconds>, "note": <signed note>}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from xacthuc.domain.b64 import b64_decode_canonical, b64_encode


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as published: its tree size, root hash, signing time and note."""

    tree_size: int
    root_hash: bytes
    signed_at: float
    note: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "size": self.tree_size,
                "root": b64_encode(self.root_hash),
                "time": self.signed_at,
                "note": self.note,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> StoredCheckpoint:
        d = json.loads(text)
        return cls(int(d["size"]), b64_decode_canonical(d["root"]), float(d["time"]), d["note"])


class CheckpointStore(Protocol):
    async def latest(self, platform: str) -> StoredCheckpoint | None:
        """The most recently stored checkpoint of the platform's log, if any."""
        ...

    async def append(self, platform: str, checkpoint: StoredCheckpoint, *, after: int) -> bool:
        """Store `checkpoint` if the latest stored one has tree size `after` (0: there is
        none) and `checkpoint` is larger; otherwise store nothing and return False."""
        ...

    async def history(self, platform: str) -> list[StoredCheckpoint]:
        """Every stored checkpoint of the platform, oldest first."""
        ...
