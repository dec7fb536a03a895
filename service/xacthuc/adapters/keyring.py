"""The signing keyring: several Ed25519 keys at once, rotated without downtime.

A keyring is a directory (XACTHUC_SIGNING_KEYS_DIR) of PEM files, one per key and named
`<kid>.pem`, and a manifest `keyring.json` that gives each key its state:

    next     published in the JWKS, does not sign yet
    active   signs new tokens (exactly one)
    retired  published only until `retire_after`, the latest expiry of a token it signed
             plus a leeway; then `prune` drops it

`rotate` moves every key one step: next -> active -> retired, and makes a new next. So a
key is in every verifier's cached JWKS for a whole rotation period before it signs, and
stays there until the last token it signed has expired: no verifier ever sees a `kid` it
cannot resolve, and tokens signed before a rotation still verify after it. The first
`rotate` (or `init`) of an empty directory creates an active and a next key.

The `kid` of a key is its RFC 7638 thumbprint (`tokens.public_jwk`); `load` recomputes it
from each PEM, so a manifest that names the wrong file is refused. Every write goes to a
temporary file that is fsynced and renamed over the old one, manifest last, under an
exclusive lock, so a crash or a second `rotate` at the same moment leaves either the old
keyring or the new one, never a mix. Servers pick up a rotation by loading the keyring
again (`Keyring.load`); `generation` grows by one on every change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xacthuc.domain.tokens import SigningKey, StatusListRef, TokenSigner, public_jwk

MANIFEST = "keyring.json"
LOCK = ".keyring.lock"
FORMAT_VERSION = 1
# Covers clock skew between the signer and verifiers (AttestationVerifier's default is 30 s).
DEFAULT_LEEWAY = 300

State = Literal["next", "active", "retired"]
_STATES = ("next", "active", "retired")
_KID = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 thumbprint


class KeyringError(Exception):
    """The keyring directory is missing, inconsistent, or the change would break verifiers."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key of the manifest. Times are seconds since the epoch."""

    kid: str
    state: State
    created_at: float
    activated_at: float | None = None
    retired_at: float | None = None
    retire_after: float | None = None

    @property
    def filename(self) -> str:
        return f"{self.kid}.pem"

    def published(self, now: float | None) -> bool:
        if self.state != "retired":
            return True
        return now is None or self.retire_after is None or now < self.retire_after

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "state": self.state,
            "created_at": self.created_at,
            "activated_at": self.activated_at,
            "retired_at": self.retired_at,
            "retire_after": self.retire_after,
        }

    @classmethod
    def from_json(cls, data: Any) -> KeyEntry:
        if not isinstance(data, dict):
            raise KeyringError("every manifest key must be an object")
        kid, state = data.get("kid"), data.get("state")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise KeyringError(f"bad kid in manifest: {kid!r}")
        if state not in _STATES:
            raise KeyringError(f"key {kid}: bad state {state!r}")

        def when(name: str, required: bool = False) -> float | None:
            value = data.get(name)
            if value is None and not required:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise KeyringError(f"key {kid}: {name} must be a number")
            return float(value)

        entry = cls(
            kid=kid,
            state=state,
            created_at=when("created_at", required=True) or 0.0,
            activated_at=when("activated_at"),
            retired_at=when("retired_at"),
            retire_after=when("retire_after"),
        )
        if entry.state == "retired" and entry.retire_after is None:
            raise KeyringError(f"key {kid}: a retired key needs retire_after")
        return entry


@dataclass(frozen=True)
class Keyring:
    """A loaded keyring: the manifest entries and their keys. Immutable; changes return a
    new `Keyring` after writing it to `directory`."""

    directory: Path
    generation: int
    entries: tuple[KeyEntry, ...]
    keys: dict[str, SigningKey]

    # ---- reading -------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path) -> Keyring:
        """Read and check the keyring in `directory`; KeyringError if it is not usable."""
        directory = Path(directory)
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyringError(
                f"no keyring at {directory} (create one with `xacthuc keys init --dir {directory}`)"
            ) from None
        except (OSError, ValueError) as e:
            raise KeyringError(f"cannot read {path}: {e}") from None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise KeyringError(f"{path}: unsupported manifest (version {FORMAT_VERSION} expected)")
        generation = data.get("generation")
        raw_keys = data.get("keys")
        if not isinstance(generation, int) or not isinstance(raw_keys, list):
            raise KeyringError(f"{path}: generation and keys are required")
        entries = tuple(KeyEntry.from_json(k) for k in raw_keys)
        keys: dict[str, SigningKey] = {}
        for entry in entries:
            pem = directory / entry.filename
            try:
                key = SigningKey.from_pem_file(pem)
            except (OSError, ValueError, TypeError) as e:
                raise KeyringError(f"key {entry.kid}: cannot load {pem}: {e}") from None
            if key.kid != entry.kid:
                raise KeyringError(f"{pem} holds key {key.kid}, not {entry.kid}")
            keys[entry.kid] = key
        ring = cls(directory, generation, entries, keys)
        ring._check()
        return ring

    def _check(self) -> None:
        kids = [e.kid for e in self.entries]
        if len(set(kids)) != len(kids):
            raise KeyringError("a kid appears twice in the manifest")
        active = [e for e in self.entries if e.state == "active"]
        if len(active) != 1:
            raise KeyringError(f"a keyring needs exactly one active key, found {len(active)}")
        if sum(e.state == "next" for e in self.entries) > 1:
            raise KeyringError("a keyring has at most one next key")

    def _one(self, state: State) -> KeyEntry | None:
        return next((e for e in self.entries if e.state == state), None)

    @property
    def active(self) -> SigningKey:
        """The key that signs."""
        entry = self._one("active")
        assert entry is not None  # _check
        return self.keys[entry.kid]

    @property
    def next(self) -> SigningKey | None:
        """The key that will sign after the next rotation (already published)."""
        entry = self._one("next")
        return None if entry is None else self.keys[entry.kid]

    def published_entries(self, now: float | None = None) -> tuple[KeyEntry, ...]:
        """Active first, then next, then retired keys still inside their window at `now`
        (every retired key still in the manifest when `now` is None)."""
        order = {"active": 0, "next": 1, "retired": 2}
        live = [e for e in self.entries if e.published(now)]
        return tuple(sorted(live, key=lambda e: (order[e.state], -(e.retired_at or 0.0))))

    def published_jwks(self, now: float | None = None) -> dict[str, Any]:
        """The JWKS verifiers need: active + next + retired keys not yet past retire_after."""
        return {
            "keys": [
                public_jwk(self.keys[e.kid].private_key.public_key())
                for e in self.published_entries(now)
            ]
        }

    def signer(
        self, issuer: str, *, now: float | None = None, status_list: StatusListRef | None = None
    ) -> TokenSigner:
        """A TokenSigner that signs with the active key and publishes the whole JWKS (as of
        `now`); `status_list` gives each token its `status` claim (see TokenSigner)."""
        others: tuple[Ed25519PublicKey, ...] = tuple(
            self.keys[e.kid].private_key.public_key()
            for e in self.published_entries(now)
            if e.state != "active"
        )
        return TokenSigner(
            self.active, issuer=issuer, also_published=others, status_list=status_list
        )

    def jwks_changes_at(self, now: float) -> float | None:
        """The next time after `now` the published JWKS changes by itself (a retired key's
        window ends), or None when no published key has such a window."""
        ends = [
            e.retire_after
            for e in self.entries
            if e.state == "retired" and e.retire_after is not None and e.retire_after > now
        ]
        return min(ends, default=None)

    # ---- changing ------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: str | Path, *, now: float) -> Keyring:
        """Create a keyring with an active and a next key in an empty (or new) directory."""
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory):
            if (directory / MANIFEST).exists():
                raise KeyringError(f"{directory} already has a keyring; use rotate")
            return _create(directory, now)

    @classmethod
    def rotate_dir(
        cls,
        directory: str | Path,
        *,
        now: float,
        token_ttl: float,
        leeway: float = DEFAULT_LEEWAY,
        min_next_age: float = 0,
    ) -> Keyring:
        """Rotate the keyring on disk in `directory` (see `rotate`), or create it if there is
        none yet. Load and rotation happen under the lock, so concurrent calls serialise."""
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory):
            if not (directory / MANIFEST).exists():
                return _create(directory, now)
            return Keyring.load(directory)._rotate(now, token_ttl, leeway, min_next_age)

    def rotate(
        self,
        *,
        now: float,
        token_ttl: float,
        leeway: float = DEFAULT_LEEWAY,
        min_next_age: float = 0,
    ) -> Keyring:
        """next -> active, active -> retired (kept until now + token_ttl + leeway), a new next;
        retired keys past their window are dropped. Written to disk; returns the new keyring.

        `token_ttl` is the longest lifetime of a token the old active key may have signed.
        `min_next_age` refuses to activate a next key published less than that many seconds
        ago (set it to the JWKS cache lifetime so every verifier has the key before it signs).
        A keyring with no next key (made by hand) only gains one: a key must be published
        before it signs. Refused when the keyring on disk is newer than this object.
        """
        with _locked(self.directory):
            current = Keyring.load(self.directory)  # the disk wins over this object
            if current.generation != self.generation:
                raise KeyringError(
                    f"the keyring changed on disk (generation {current.generation}, "
                    f"this copy is {self.generation}); load it again"
                )
            return current._rotate(now, token_ttl, leeway, min_next_age)

    def _rotate(self, now: float, token_ttl: float, leeway: float, min_next_age: float) -> Keyring:
        """The rotation itself; the caller holds the lock and loaded `self` under it."""
        if token_ttl < 0 or leeway < 0:
            raise KeyringError("token_ttl and leeway must not be negative")
        nxt = self._one("next")
        if nxt is not None and min_next_age > 0 and now - nxt.created_at < min_next_age:
            raise KeyringError(
                f"next key {nxt.kid} was published {now - nxt.created_at:.0f} s ago, "
                f"less than {min_next_age:.0f} s: verifiers may not have it yet"
            )
        keys = dict(self.keys)
        new_next = SigningKey.generate()
        keys[new_next.kid] = new_next
        entries: list[KeyEntry] = []
        for e in self.entries:
            if nxt is None:
                # No published successor (a hand-made keyring): only add one. A key that
                # was never published must not sign, so the active key stays active.
                if e.published(now):
                    entries.append(e)
            elif e.state == "active":
                retire_after = now + token_ttl + leeway
                entries.append(
                    replace(e, state="retired", retired_at=now, retire_after=retire_after)
                )
            elif e.state == "next":
                entries.append(replace(e, state="active", activated_at=now))
            elif e.published(now):
                entries.append(e)
        entries.append(KeyEntry(new_next.kid, "next", created_at=now))
        kept = {e.kid: keys[e.kid] for e in entries}
        ring = _write(self.directory, self.generation + 1, tuple(entries), kept)
        _remove_unlisted(self.directory, kept)
        return ring

    def prune(self, *, now: float) -> Keyring:
        """Drop retired keys whose window has passed (manifest first, then their files)."""
        with _locked(self.directory):
            current = Keyring.load(self.directory)
            entries = tuple(e for e in current.entries if e.published(now))
            if entries == current.entries:
                return current
            kept = {e.kid: current.keys[e.kid] for e in entries}
            ring = _write(self.directory, current.generation + 1, entries, kept)
            _remove_unlisted(self.directory, kept)
            return ring


# ---- files ---------------------------------------------------------------------------------


def _create(directory: Path, now: float) -> Keyring:
    active, nxt = SigningKey.generate(), SigningKey.generate()
    entries = (
        KeyEntry(active.kid, "active", created_at=now, activated_at=now),
        KeyEntry(nxt.kid, "next", created_at=now),
    )
    return _write(directory, 1, entries, {active.kid: active, nxt.kid: nxt})


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the keyring directory, so two rotations cannot interleave."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(
    directory: Path, generation: int, entries: tuple[KeyEntry, ...], keys: dict[str, SigningKey]
) -> Keyring:
    ring = Keyring(directory, generation, entries, dict(keys))
    ring._check()
    # Keys first, manifest last: until the manifest is renamed, the old keyring is intact.
    for entry in entries:
        pem = directory / entry.filename
        if not pem.exists():
            write_atomic(pem, keys[entry.kid].to_pem())
    manifest = {
        "version": FORMAT_VERSION,
        "generation": generation,
        "keys": [e.to_json() for e in entries],
    }
    body = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
    write_atomic(directory / MANIFEST, body, mode=0o644)
    return ring


def _remove_unlisted(directory: Path, kept: dict[str, SigningKey]) -> None:
    """Delete the PEM files of keys no longer in the manifest (after the manifest is written)."""
    for pem in directory.glob("*.pem"):
        if _KID.fullmatch(pem.stem) and pem.stem not in kept:
            pem.unlink(missing_ok=True)
