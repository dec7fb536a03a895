"""The attestation signer in use, kept current with the keyring on disk (key rotation, issue 5).

Three sources, in this order of preference:

    XACTHUC_SIGNING_KEYS_DIR   a keyring (`xacthuc keys init`): active, next and retired keys;
                               `xacthuc keys rotate` takes effect without a restart
    XACTHUC_SIGNING_KEY_FILE   one PEM key, fixed for the life of the process
    neither (dev mode only)    a key generated for this run

How a rotation reaches a running server. `current()` is called on every signature and every
JWKS read; with a keyring it first `stat`s `keyring.json` (about a microsecond) and loads the
keyring again when the file changed. Writers replace the manifest by an atomic rename, so a
change always shows as a new (inode, mtime, size); the manifest's `generation` is also re-read
every `RECHECK_SECONDS`, which catches the one case a stat can miss (two rotations within one
timestamp tick that reuse an inode and give a file of the same size). This was chosen over a
background polling task: there is no window in which a rotated keyring is on disk but the
server still signs with the key the rotation retired, nothing to start or stop, and the cost
is one system call per signature. Either way the keyring's rules make a late pick-up safe: the
key that becomes active was published as `next` a whole period before.

Signed tokens are kept (`sign`): the token of one (platform, attestation record, key id) is
signed once and the same bytes are handed out again, so `GetAttestation` repeated, or after a
confirm whose response was lost, costs no signature. At most `SIGNED_TOKENS` are kept (least
recently used first out); they are dropped when the active key changes (a rotation), and a
record that changed in any field (another token id, an upgrade) is another entry.

A keyring that fails to load (a file missing, a manifest edited by hand) is logged and the
keys held stay in use; the load is tried again when the file changes, or after
`RETRY_SECONDS`. The JWKS is also rebuilt when a retired key's window ends (`retire_after`),
so a pruned-by-time key leaves the JWKS without any change on disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

from xacthuc.adapters.keyring import MANIFEST, Keyring, KeyringError
from xacthuc.domain.clock import Clock, MonotonicClock
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.tokens import SigningKey, StatusListRef, TokenSigner
from xacthuc.server.config import Settings

log = logging.getLogger(__name__)

RECHECK_SECONDS = 10.0  # re-read the manifest's generation at least this often
RETRY_SECONDS = 5.0  # after a failed load, try again no sooner (unless the file changes)
SIGNED_TOKENS = 4096  # signed tokens kept for `sign` (about 1 KiB each with its record)

_Stat = tuple[int, int, int, int] | None
_NOTHING = object()


class SigningKeys:
    """Hands out the current `TokenSigner`. `clock` is the service's (injected) clock: it
    decides which retired keys are still published; `monotonic` paces the re-checks."""

    def __init__(
        self,
        *,
        issuer: str,
        clock: Clock,
        key: SigningKey | None = None,
        keys_dir: Path | None = None,
        status_list: StatusListRef | None = None,
        monotonic: Clock | None = None,
    ) -> None:
        if (key is None) == (keys_dir is None):
            raise ValueError("give exactly one of key and keys_dir")
        self._issuer = issuer
        self._clock = clock
        self._monotonic = monotonic or MonotonicClock()
        self._status_list = status_list
        self._dir = keys_dir
        self._ring: Keyring | None = None
        self._seen: _Stat = None
        self._checked_at = 0.0
        self._retry_at = 0.0
        self._failed: object = _NOTHING  # the stat of the manifest that last failed to load
        self._changes_at: float | None = None
        self.reloads = 0  # keyrings installed after the first, for tests and metrics
        self._signed: OrderedDict[tuple[str, AttestationRecord], str] = OrderedDict()
        self._signed_kid = ""
        self.signatures = 0  # tokens actually signed by `sign`, for tests
        if keys_dir is not None:
            self._seen = self._stat()
            self._checked_at = self._monotonic.now()
            self._install(Keyring.load(keys_dir))  # KeyringError: the server does not start
        else:
            assert key is not None
            self._signer = TokenSigner(key, issuer=issuer, status_list=status_list)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        clock: Clock,
        *,
        status_list: StatusListRef | None = None,
    ) -> SigningKeys:
        if settings.signing_keys_dir is not None:
            if settings.signing_key_file is not None:
                log.warning("XACTHUC_SIGNING_KEYS_DIR is set: XACTHUC_SIGNING_KEY_FILE is not used")
            return cls(
                issuer=settings.issuer,
                clock=clock,
                keys_dir=settings.signing_keys_dir,
                status_list=status_list,
            )
        if settings.signing_key_file is not None:
            key = SigningKey.from_pem_file(settings.signing_key_file)
        else:
            log.warning(
                "dev mode: generated a signing key for this run (set XACTHUC_SIGNING_KEYS_DIR "
                "or XACTHUC_SIGNING_KEY_FILE)"
            )
            key = SigningKey.generate()
        return cls(issuer=settings.issuer, clock=clock, key=key, status_list=status_list)

    @property
    def keyring(self) -> Keyring | None:
        """The keyring in use (None with a single key)."""
        return self._ring

    @property
    def generation(self) -> int:
        """The keyring generation in use (0 with a single key)."""
        return 0 if self._ring is None else self._ring.generation

    def current(self) -> TokenSigner:
        """The signer to use now; with a keyring, picks up a rotation done on disk."""
        if self._dir is not None:
            self._check()
        return self._signer

    def sign(self, platform: str, record: AttestationRecord) -> str:
        """The token of `record` signed by the active key: the same bytes as the last time this
        record was signed by this key while it is kept (Ed25519 is deterministic, so a token
        signed again would be the same bytes too; this spares the signature). A rotation
        empties the store: the new active key signs the same claims anew."""
        signer = self.current()
        if signer.kid != self._signed_kid:
            self._signed.clear()
            self._signed_kid = signer.kid
        key = (platform, record)
        token = self._signed.get(key)
        if token is not None:
            self._signed.move_to_end(key)
            return token
        token = signer.sign(platform, record)
        self.signatures += 1
        self._signed[key] = token
        if len(self._signed) > SIGNED_TOKENS:
            self._signed.popitem(last=False)
        return token

    # ---- the keyring -------------------------------------------------------------------------

    def _stat(self) -> _Stat:
        assert self._dir is not None
        try:
            st = os.stat(self._dir / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _check(self) -> None:
        mono = self._monotonic.now()
        seen = self._stat()
        if seen != self._seen:
            # A file that failed to load is tried again when it changes, or after a pause.
            if seen != self._failed or mono >= self._retry_at:
                self._reload(seen, mono)
        elif mono - self._checked_at >= RECHECK_SECONDS:
            self._checked_at = mono
            if self._disk_generation() not in (None, self.generation):
                self._reload(seen, mono)
        if self._changes_at is not None and self._clock.now() >= self._changes_at:
            assert self._ring is not None
            self._install(self._ring)  # a retired key's window ended: rebuild the JWKS

    def _disk_generation(self) -> int | None:
        assert self._dir is not None
        try:
            generation = json.loads((self._dir / MANIFEST).read_bytes()).get("generation")
        except (OSError, ValueError, AttributeError):
            return None
        return generation if isinstance(generation, int) else None

    def _reload(self, seen: _Stat, mono: float) -> None:
        assert self._dir is not None
        self._checked_at = mono
        try:
            ring = Keyring.load(self._dir)
        except KeyringError as e:
            self._retry_at = mono + RETRY_SECONDS
            self._failed = seen
            log.error(
                "signing keyring %s did not load, keeping generation %d: %s",
                self._dir,
                self.generation,
                e,
            )
            return
        self._seen = seen
        self._failed = _NOTHING
        if ring.generation != self.generation:
            old = self._signer.kid
            self._install(ring)
            self.reloads += 1
            log.info(
                "signing keyring generation %d loaded: active key %s (was %s), %d published",
                ring.generation,
                self._signer.kid,
                old,
                len(ring.published_entries(self._clock.now())),
            )

    def _install(self, ring: Keyring) -> None:
        now = self._clock.now()
        self._ring = ring
        self._signer = ring.signer(self._issuer, now=now, status_list=self._status_list)
        self._changes_at = ring.jwks_changes_at(now)
