"""The Redis store: each operation is one Lua script, one round trip, one atomic step.

The scripts in `xacthuc/lua/` mirror `memory.py` line for line; this module only names the
keys, encodes the parameters and turns the scripts' replies into results or exceptions.

Key layout, all under one hash tag per platform so a platform lives in one cluster slot:

    <ns>:{<platform>}:c:<id head>           string: the challenge, packed (common.lua,
                                            challenge_of: state sending -> pending ->
                                            consumed, attempts, times, the rest of its id,
                                            a 16-byte digest of its account, pseudonyms,
                                            MAC), named by its id's first 14 characters: with
                                            an idempotency key, the key's slot (records.py),
                                            so the record is also the key's: one key per
                                            challenge, not two
    <ns>:{<platform>}:p:<phone>             string: the number's P2 state (fails, lock_level,
                                            locked_until), last_send and its send times of
                                            the last day (P3), packed (phone_of)
    <ns>:{<platform>}:i:<client>            string: the send times of the client-IP bucket's
                                            last hour, packed
    <ns>:{<platform>}:pl                    list: the platform's send times of the last hour,
                                            oldest first, one packed double each
    <ns>:{<platform>}:phacct:<phone>        set: accounts attested with the number (P8)
    <ns>:{<platform>}:acct:<account>        hash: the account's current attestation
    <ns>:{<platform>}:audit                 list: the platform's audit records
    <ns>:{<platform>}:link:<link id>        hash: a guardian link (P6), kept once ended
    <ns>:{<platform>}:childlink:<account>   string: the child's active link id
    <ns>:{<platform>}:gkids:<pseudonym>     set: children with an active link, per guardian
    <ns>:{<platform>}:agingout              zset: children with an active link, scored by
                                            their 16th birthday
    <ns>:{<platform>}:sl:next               string: the token counter (INCR)
    <ns>:{<platform>}:sl:key                hash: key, block: the status-index permutation's
                                            key and block size (status_index.py), fixed at
                                            the first allocation
    <ns>:{<platform>}:sl:bits               string: the status bitmap (SETBIT; 1 = revoked),
                                            whole blocks long
    <ns>:{<platform>}:acctsl:<account>      set: every status index issued to the account
    <ns>:{<platform>}:lock:<account>        hash: the account's latest lock (R7), kept once lifted
    <ns>:{<platform>}:locks                 zset: accounts with a lock, scored by its end
                                            (+inf when permanent); lifted ones are removed

Guardian links, the status list and attestations do not expire (P10 retention is the
operator's). Challenges and idempotency keys expire `challenge_retention_seconds` after the challenge
does, send windows after their window, phone state a day after its last activity or lock.

Memory (issue 11): a pending challenge costs three small keys and one list entry, about 650
bytes whatever the account id's length (up to 128 characters); Redis spends ~150 bytes on a key
whatever its value, so values are packed (times as 8-byte doubles, hex pseudonyms and MACs as
bytes) and nothing is stored twice. The challenge keeps its account as a digest
(`_account_digest`), not in full: every call naming a challenge (check_code, confirm_sent,
abort_challenge) passes the account id, which the audit records take from the call. The
challenge value is 124 bytes, which with its string header fills jemalloc's 128-byte class:
one byte more costs 32. `benchmarks/run.py` prints the bytes per pending challenge (worst case:
128-character account ids); tests/test_redis_memory.py holds the bound. The send logs keep
times only, not challenge ids: undoing a send removes one entry of its time, which leaves the
same counts.
Expiry only reclaims memory: every rule is decided from the caller's `now`, as in memory.
The namespace and platform must not contain `{` or `}`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import cache
from importlib import resources
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    NoScriptError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xacthuc.adapters.store.redis_cluster import ClusterOnce, cluster_client, is_cluster_url
from xacthuc.domain.clock import rfc3339
from xacthuc.domain.errors import (
    AccountNotAuthenticated,
    AttestationNotFound,
    ChallengeAccountMismatch,
    ChallengeAlreadyUsed,
    ChallengeNotFound,
    ChildAlreadyLinked,
    ChildNotUnder16,
    GuardianChildLimit,
    GuardianManagedNoCommercialLivestream,
    GuardianNotVerified,
    GuardianRequired,
    GuardianUnder18,
    IdAttemptsExceeded,
    IdempotencyKeyReused,
    LinkAlreadyEnded,
    LinkNotFound,
    OtpAttemptsExceeded,
    OtpExpired,
    OtpIncorrect,
    PersonalIdAccountLimit,
    PersonalIdNotMatched,
    PhoneAccountLimit,
    PhoneLocked,
    RegistryUnavailable,
    ResendTooSoon,
    SendLimitExceeded,
    StartInProgress,
    StoreUnavailable,
    XacthucError,
)
from xacthuc.domain.locks import AccountLock, LockRequest
from xacthuc.domain.records import (
    AUDIT_FORMAT_VERSION,
    CHALLENGE_PREFIX,
    SLOT_CHARS,
    AgingOut,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    GuardianLink,
    IdAttempt,
    Limits,
    LinkResult,
    NewChallenge,
    PendingAttestation,
    audit_record,
    check_reason_code,
    split_audit_record,
)
from xacthuc.domain.status_index import INDEX_BLOCK, KEY_HEX_CHARS, check_block

_SCRIPTS = (
    "start_challenge",
    "confirm_sent",
    "abort_challenge",
    "check_code",
    "append_audit",
    "begin_id_check",
    "finish_id_check",
    "link_guardian",
    "end_guardian_link",
    "sweep_aged_out",
    "list_aging_out",
    "revoke_attestation",
    "lock_account",
    "unlock_account",
    "locked_status_indexes",
)
# Read-only scripts that need nothing of the prelude (no parameters, no audit): run bare, as
# cheap as a single command (the prelude's JSON decoding and definitions cost per call).
_BARE_SCRIPTS = ("account_state",)
# Scripts that only read: safe to run again, so they keep the client's retries. Every other
# script changes state and is sent at most once (`without_retries`).
_READ_ONLY = frozenset({"account_state", "list_aging_out", "locked_status_indexes"})

# Reasons a script may refuse with; SEND_LIMIT_EXCEEDED and OTP_INCORRECT carry extra metadata.
_REFUSALS: dict[str, type[XacthucError]] = {
    cls.reason: cls
    for cls in (
        AccountNotAuthenticated,
        AttestationNotFound,
        ChildAlreadyLinked,
        ChildNotUnder16,
        GuardianChildLimit,
        GuardianNotVerified,
        GuardianRequired,
        GuardianUnder18,
        LinkAlreadyEnded,
        LinkNotFound,
        GuardianManagedNoCommercialLivestream,
        PersonalIdAccountLimit,
        PersonalIdNotMatched,
        RegistryUnavailable,
        ChallengeAccountMismatch,
        ChallengeAlreadyUsed,
        ChallengeNotFound,
        IdempotencyKeyReused,
        OtpAttemptsExceeded,
        OtpExpired,
        OtpIncorrect,
        PhoneAccountLimit,
        PhoneLocked,
        ResendTooSoon,
        SendLimitExceeded,
        StartInProgress,
    )
}


@cache
def _lua(name: str, *, prelude: bool = True) -> str:
    """The prelude shared by all scripts (unless `prelude` is False), then the operation's
    own body. With the prelude, the body runs as a function, so that with `P.outbox` (the
    audit log in PostgreSQL) the script answers {records, reply} whichever `return` of
    the body answered."""
    folder = resources.files("xacthuc.adapters.store") / "lua"
    body = (folder / f"{name}.lua").read_text("utf-8")
    if not prelude:
        return body
    return "\n".join(
        (
            (folder / "common.lua").read_text("utf-8"),
            "local function body()",
            body,
            "end",
            "local reply = body()",
            "if OUTBOX then",
            "  return { OUTBOX, reply }",
            "end",
            "return reply",
        )
    )


_HEAD = len(CHALLENGE_PREFIX) + SLOT_CHARS


def _split_id(challenge_id: str) -> tuple[str, str]:
    """The part of a challenge id its record is named by, and the rest, kept in the record:
    an id of the service's form ("ch_" + 22) splits after its slot (records.py), so a
    challenge and its idempotency key are one record; any other id is a name of its own."""
    if challenge_id.startswith(CHALLENGE_PREFIX) and len(challenge_id) > _HEAD:
        return challenge_id[:_HEAD], challenge_id[_HEAD:]
    return challenge_id, ""


def _account_digest(head: str, account_id: str) -> str:
    """What a challenge record keeps of its account (hex; the record holds the 16 bytes): the
    first 128 bits of SHA-256 over the record's name and the account id, so a 128-character
    id costs no more than a short one (issue 11). Every call naming a challenge passes its
    account, and the scripts compare digests. Matching another account's challenge takes a
    second preimage of the victim's digest (~2^128 SHA-256), the name salting it so no table
    serves two records; a birthday pair (~2^64) needs both ids chosen by one party, for a name
    fixed in advance (an idempotency key's slot), and gets it nothing it has not got: the
    code still goes to the number the start named, and check_code decides R1, P8 and the
    number's lock for the account that checks."""
    text = f"xacthuc challenge account\x1f{len(head)}\x1f{head}\x1f{account_id}"
    return hashlib.sha256(text.encode()).digest()[:16].hex()


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@cache
def _limits_json(limits: Limits) -> RawJson:
    """Limits never change while the service runs: encode them once, not on every call
    (dataclasses.asdict alone cost ~0.1 ms per call, measured)."""
    return RawJson(json.dumps(asdict(limits), separators=(",", ":")))


class RawJson(str):
    """JSON text spliced into the parameters as it is."""


def _encode_params(params: dict[str, Any]) -> str:
    """One JSON object; RawJson values are inserted verbatim (already encoded)."""
    raw = {k: v for k, v in params.items() if isinstance(v, RawJson)}
    if not raw:
        return json.dumps(params, ensure_ascii=False, separators=(",", ":"))
    rest = {k: v for k, v in params.items() if not isinstance(v, RawJson)}
    body = json.dumps(rest, ensure_ascii=False, separators=(",", ":"))
    extra = ",".join(f"{json.dumps(k)}:{v}" for k, v in raw.items())
    return body[:-1] + ("," if rest else "") + extra + "}"


_PLAIN = re.compile(r"[A-Za-z0-9_.:@+-]*")


def _j(value: str) -> str:
    """A string as JSON text, exactly as `audit_record()` writes it (ASCII, escaped).
    Ids and pseudonyms need no escaping: they skip the encoder (measurably, on every call)."""
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


_NO_RETRY = Retry(NoBackoff(), 0)


class _NoRetryPool:
    """The connection pool of a client, handing out its connections with no command retry.

    redis-py (6 and later) retries a failed command, three times by default, and a command
    whose reply was lost may have run: a code consumed or a budget charged twice. A client
    over this view of the pool (`without_retries`) sends each command once, on the same
    connections as the client it came from: a connection checked out here has its `Retry`
    replaced until it is released. The pool has already (re)connected it by then, with the
    client's retries: nothing was sent yet. A failed command disconnects its connection, as
    redis-py does, so a reply still on its way is never read by the next command."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        conn = await self._pool.get_connection()
        conn._xacthuc_retry, conn.retry = conn.retry, _NO_RETRY
        return conn

    async def release(self, conn: Any) -> None:
        conn.retry = conn.__dict__.pop("_xacthuc_retry", conn.retry)
        await self._pool.release(conn)


# A Redis server's client, or a Redis Cluster's (redis_cluster.py).
RedisClient = aioredis.Redis | RedisCluster


def redis_client(url: str) -> RedisClient:
    """The client a store URL names: a cluster's for `redis+cluster://` (and
    `rediss+cluster://`), else one server's (`redis://`, `rediss://`, `unix://`)."""
    if is_cluster_url(url):
        return cluster_client(url)
    return aioredis.Redis.from_url(url, decode_responses=True)


def without_retries(client: RedisClient) -> Any:
    """A client that sends every command once, over `client`'s connections (its pool: its
    address, credentials and TLS), whatever `Retry` `client` was built with. Closing it
    leaves the shared pool open. On a cluster: `ClusterOnce` (each script sent once to its
    slot's primary)."""
    if isinstance(client, RedisCluster):
        return ClusterOnce(client)
    pool: Any = _NoRetryPool(client.connection_pool)
    return aioredis.Redis(connection_pool=pool)


class LuaScript:
    """A Lua script run by EVALSHA, loaded again after a NOSCRIPT reply (a restarted or
    failed-over Redis forgets scripts). redis-py's Script object does the same with more
    bookkeeping per call; this path was measurably cheaper on the hot RPCs. A script that
    changes state is run on a `without_retries` client: a NOSCRIPT reply means it did not
    run, so loading it and sending it again is no second run.

    On a cluster, EVALSHA goes to the primary of the first key's slot and each node knows
    only the scripts loaded on it: the script is loaded on the node that answered NOSCRIPT
    (the client tells which, after any MOVED or ASK it followed). A slot moving to yet
    another node meanwhile may answer NOSCRIPT again, so this repeats, a few times."""

    LOADS = 3  # NOSCRIPT answers handled per run, at most

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324  (Redis names scripts by SHA-1)

    async def run(self, client: Any, keys: Sequence[str], args: Sequence[str]) -> Any:
        """EVALSHA on `client` (a Redis, a RedisCluster, or their `without_retries`)."""
        for _ in range(self.LOADS):
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError as e:
                node = getattr(e, "connection", None)
                if isinstance(node, ClusterNode):  # the cluster node that lacks it
                    await client.execute_command("SCRIPT LOAD", self.source, target_nodes=node)
                else:
                    await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)


def _time(value: float) -> str:
    """A time for Lua: repr() is the shortest text that reads back as the same double."""
    return repr(float(value))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A flat HGETALL-style reply as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _record(h: dict[str, str]) -> AttestationRecord:
    """An attestation hash as the record (hashes written before issue 4 lack the new fields)."""
    aged_out_at = h.get("aged_out_at", "")
    revoked_at = h.get("revoked_at", "")
    return AttestationRecord(
        account_id=h["account_id"],
        method=h["method"],
        token_id=h["token_id"],
        verified_at=float(h["verified_at"]),
        issued_at=float(h["issued_at"]),
        expires_at=float(h["expires_at"]),
        status=h["status"],
        guardian_managed=h["guardian_managed"] == "1",
        commercial_livestream=h["commercial_livestream"] == "1",
        age_band=h.get("age_band", ""),
        guardian_ref=h.get("guardian_ref", ""),
        aged_out_at=float(aged_out_at) if aged_out_at else None,
        link_id=h.get("link_id", ""),
        status_idx=int(h.get("status_idx") or -1),
        revoked_at=float(revoked_at) if revoked_at and h["status"] == "revoked" else None,
        id_type=h.get("id_type", ""),
    )


def _lock(h: dict[str, str]) -> AccountLock:
    """A lock hash as the record."""
    until, ended_at = h.get("lock_until", ""), h.get("ended_at", "")
    return AccountLock(
        account_id=h["account_id"],
        kind=h["kind"],
        locked_at=float(h["locked_at"]),
        until=float(until) if until else None,
        reason=h["reason"],
        request_reference=h["request_reference"],
        temporary_locks=int(h.get("temporary_locks") or 0),
        ended_at=float(ended_at) if ended_at else None,
        unlock_reason=h.get("unlock_reason", ""),
    )


def _refusal(reason: str, retry_after: str, extra: str) -> XacthucError:
    """The exception MemoryStore raises for the same refusal."""
    retry = float(retry_after) if retry_after else None
    if reason == SendLimitExceeded.reason:
        return SendLimitExceeded(
            f"send limit reached ({extra})", metadata={"scope": extra}, retry_after=retry
        )
    if reason == OtpIncorrect.reason:
        return OtpIncorrect(metadata={"attempts_remaining": extra})
    if reason == IdAttemptsExceeded.reason:
        return IdAttemptsExceeded(metadata={"scope": extra}, retry_after=retry)
    return _REFUSALS[reason](retry_after=retry)


# Faults after which a retry later can succeed: no connection, a slow server, a replica
# that took over read-only after a failover, a server still loading its data; on a cluster
# (redis_cluster.py) also CLUSTERDOWN and MASTERDOWN (ClusterDownError, MasterDownError),
# redirections or TRYAGAIN past the client's 16 (ClusterError), a slot no node serves, and
# MOVED/ASK reaching a client that does not follow them (a plain client sent to a node).
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    BusyLoadingError,
    ClusterError,
    TryAgainError,
    AskError,
    SlotNotCoveredError,
)


class AuditSink(Protocol):
    """Where a RedisStore's audit log is kept when it is not kept in Redis: PostgreSQL
    (`pg_audit.GroupAppender`). Records come rendered by the scripts, their `seq` to be
    assigned by the sink."""

    async def append(self, platform: str, records: Sequence[str]) -> int: ...

    async def ready(self) -> None:
        """Raise StoreUnavailable when the sink is known to be out of reach."""
        ...

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int: ...

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]: ...


async def run_script(
    script: LuaScript,
    client: Any,
    keys: Sequence[str],
    params: dict[str, Any],
    audit: AuditSink | None,
) -> list[str]:
    """One EVALSHA of a prelude script; a lost connection is StoreUnavailable. With `audit`
    and `params["outbox"]`, the records the script wrote are stored there before this
    returns (a refusal too is audited), and while `audit` is known to be down the script is
    not sent: a state change whose records could not be stored must not happen."""
    sink = audit if "outbox" in params else None
    if sink is not None:
        await sink.ready()
    try:
        reply = await script.run(client, keys, [_encode_params(params)])
    except _UNAVAILABLE as e:
        raise StoreUnavailable() from e
    if sink is not None:
        records, reply = reply[0], (reply[1] if len(reply) > 1 else [])
        if records:
            await sink.append(params["platform"], [_text(r) for r in records])
    return [_text(part) for part in reply]


class RedisStore:
    """The `Store` contract on Redis 7 (or a cluster: one platform, one slot).

    With `audit` (issue 10), the audit log is not kept in Redis: each script hands back the
    records it wrote (its outbox) and the call returns, or raises its refusal, only once
    `audit` has stored them (PostgreSQL). A Redis lost then loses no record: the log goes on
    from where it was.

    A given `client` is used as is and left open by `aclose`; without one, the store opens
    its own from `url` (`redis_client`: `redis+cluster://` names a Redis Cluster). Whatever `Retry` the client has (redis-py retries three times by
    default), a script that changes state is sent once (`without_retries`): one whose reply was
    lost may have run, so it must not run twice; the caller gets StoreUnavailable and
    retries with its idempotency key. Reads (plain commands, read-only scripts) keep the
    client's retries.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "xacthuc",
        client: RedisClient | None = None,
        status_block: int = INDEX_BLOCK,
        status_keys: Callable[[], str] = lambda: secrets.token_hex(KEY_HEX_CHARS // 2),
        audit: AuditSink | None = None,
    ) -> None:
        """`status_block` and `status_keys` as for MemoryStore: the first allocation of a
        platform's status index keeps them in Redis, so later values change nothing."""
        self._audit = audit
        self._owns_client = client is None
        self._redis: RedisClient = client if client is not None else redis_client(url)
        self._namespace = namespace
        # State-changing scripts go out once (see `without_retries`), reads keep the retries.
        self._once = without_retries(self._redis)
        self._scripts = {name: LuaScript(_lua(name)) for name in _SCRIPTS}
        self._scripts |= {name: LuaScript(_lua(name, prelude=False)) for name in _BARE_SCRIPTS}
        self._script_client = {
            name: self._redis if name in _READ_ONLY else self._once for name in self._scripts
        }
        self._status_block = check_block(status_block)
        self._status_keys = status_keys

    def _status_params(self) -> dict[str, str]:
        """What a platform's first status-index allocation fixes (a fresh random key)."""
        return {"sl_key": self._status_keys(), "sl_block": str(self._status_block)}

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "xacthuc") -> RedisStore:
        return cls(url, namespace=namespace)

    @property
    def client(self) -> RedisClient:
        """The redis-py client in use (for instrumentation at composition)."""
        return self._redis

    @property
    def once_client(self) -> Any:
        """The client of the state-changing scripts: `client`'s connections, each command
        sent once (`without_retries`). Instrument it too, unless `clustered`."""
        return self._once

    @property
    def clustered(self) -> bool:
        """Whether Redis is a cluster: then `once_client` sends its commands through
        `client` (a `ClusterOnce`), and instrumenting `client` traces them too."""
        return isinstance(self._redis, RedisCluster)

    def _prefix(self, platform: str) -> str:
        return f"{self._namespace}:{{{platform}}}:"

    def _common(self, platform: str, now: float, *, audited: bool = True) -> dict[str, Any]:
        """The parameters every prelude script reads. `audited=False` for a read-only script:
        it writes no record, so it neither waits for nor is refused by the audit sink."""
        common = {
            "prefix": self._prefix(platform),
            "now": _time(now),
            "time_j": _j(rfc3339(now)),
            "platform_j": _j(platform),
            "audit_version": str(AUDIT_FORMAT_VERSION),
        }
        if self._audit is not None and audited:
            common["outbox"] = RawJson("true")
            common["platform"] = platform
        return common

    async def _run(self, name: str, keys: Sequence[str], params: dict[str, Any]) -> list[str]:
        """One EVALSHA (`run_script`); a refusal becomes its exception."""
        script, client = self._scripts[name], self._script_client[name]
        reply = await run_script(script, client, keys, params, self._audit)
        if reply[0] == "err":
            raise _refusal(reply[1], reply[2], reply[3])
        return reply

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        keys, params = self._start_args(new, limits)
        status, challenge_id, expires_at, resend_not_before = await self._run(
            "start_challenge", keys, params
        )
        return ChallengeView(
            challenge_id, float(expires_at), float(resend_not_before), status == "replay"
        )

    def _start_args(self, new: NewChallenge, limits: Limits) -> tuple[list[str], dict[str, Any]]:
        """The keys and parameters of start_challenge.lua (the pair adds its facts)."""
        pre = self._prefix(new.platform)
        head, tail = _split_id(new.challenge_id)
        keys = [
            f"{pre}c:{head}",
            f"{pre}p:{new.phone}",
            f"{pre}pl",
            f"{pre}i:{new.client}",
            f"{pre}phacct:{new.phone}",
            f"{pre}audit",
        ]
        params = self._common(new.platform, new.now) | {
            "head": head,
            "tail": tail,
            "keyed": "1" if new.idempotency_key else "",
            "limits": _limits_json(limits),
            "challenge_id": new.challenge_id,
            "challenge_j": _j(new.challenge_id),
            "account": new.account_id,
            "account_j": _j(new.account_id),
            "account_digest": _account_digest(head, new.account_id),
            "phone": new.phone,
            "phone_j": _j(new.phone),
            "client": new.client,
            "client_j": _j(new.client),
            "code_mac": new.code_mac,
            "expires_at": _time(new.expires_at),
        }
        return keys, params

    def _challenge_params(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> tuple[str, dict[str, Any]]:
        """The name of the challenge's record (its id's head) and the parameters naming the
        challenge and its account (confirm_sent, abort_challenge)."""
        head, tail = _split_id(challenge_id)
        return head, self._common(platform, now) | {
            "challenge_j": _j(challenge_id),
            "tail": tail,
            "account_j": _j(account_id),
            "account_digest": _account_digest(head, account_id),
        }

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        pre = self._prefix(platform)
        head, params = self._challenge_params(platform, challenge_id, account_id, now)
        await self._run("confirm_sent", [f"{pre}c:{head}", f"{pre}audit"], params)

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        pre = self._prefix(platform)
        head, params = self._challenge_params(platform, challenge_id, account_id, now)
        await self._run("abort_challenge", [f"{pre}c:{head}", f"{pre}pl", f"{pre}audit"], params)

    @staticmethod
    def _pending(a: PendingAttestation) -> dict[str, str]:
        return {
            "token_id": a.token_id,
            "token_id_j": _j(a.token_id),
            "method": a.method,
            "method_j": _j(a.method),
            "issued_at": _time(a.issued_at),
            "expires_at": _time(a.expires_at),
            "expires": str(int(a.expires_at)),
            "age_band": a.age_band,
            "age_band_j": _j(a.age_band),
            "id_type": a.id_type,
            "id_type_j": _j(a.id_type),
        }

    def _check_args(self, check: CodeCheck, limits: Limits) -> tuple[list[str], dict[str, Any]]:
        """The keys and parameters of check_code.lua without the attestation's (the pair's
        Lua step issues none)."""
        pre = self._prefix(check.platform)
        head, tail = _split_id(check.challenge_id)
        keys = [f"{pre}c:{head}", f"{pre}acct:{check.account_id}", f"{pre}audit"]
        params = self._common(check.platform, check.now) | {
            "tail": tail,
            "limits": _limits_json(limits),
            "challenge_j": _j(check.challenge_id),
            "account": check.account_id,
            "account_j": _j(check.account_id),
            "account_digest": _account_digest(head, check.account_id),
            "candidates": list(check.candidates),
        }
        return keys, params

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        keys, params = self._check_args(check, limits)
        params |= {"attestation": self._pending(check.attestation), **self._status_params()}
        _, method, token_id, verified_at, issued_at, expires_at, idx = await self._run(
            "check_code", keys, params
        )
        return AttestationRecord(
            account_id=check.account_id,
            method=method,
            token_id=token_id,
            verified_at=float(verified_at),
            issued_at=float(issued_at),
            expires_at=float(expires_at),
            age_band=check.attestation.age_band,
            status_idx=int(idx),
        )

    def _id_params(self, attempt: IdAttempt, limits: Limits) -> dict[str, Any]:
        return self._common(attempt.platform, attempt.now) | {
            "limits": _limits_json(limits),
            "account": attempt.account_id,
            "account_j": _j(attempt.account_id),
            "attempt_id": attempt.attempt_id,
            "attempt_j": _j(attempt.attempt_id),
            "subject": attempt.subject,
            "subject_j": _j(attempt.subject),
            "client_j": _j(attempt.client),
            "purpose": attempt.purpose,
            "purpose_j": _j(attempt.purpose),
            "id_type_j": _j(attempt.id_type),
        }

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        pre = self._prefix(attempt.platform)
        keys = [
            f"{pre}idg:acct:{attempt.account_id}",
            f"{pre}idatt:acct:{attempt.account_id}",
            f"{pre}idg:id:{attempt.subject}",
            f"{pre}idatt:id:{attempt.subject}",
            f"{pre}acct:{attempt.account_id}",
            f"{pre}audit",
        ]
        await self._run("begin_id_check", keys, self._id_params(attempt, limits))

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        pre = self._prefix(attempt.platform)
        keys = [
            f"{pre}idg:acct:{attempt.account_id}",
            f"{pre}idg:id:{attempt.subject}",
            f"{pre}idacct:{attempt.subject}",
            f"{pre}acct:{attempt.account_id}",
            f"{pre}audit",
            f"{pre}idatt:acct:{attempt.account_id}",
            f"{pre}idatt:id:{attempt.subject}",
        ]
        params = self._id_params(attempt, limits) | {
            "answer": answer,
            "attestation": self._pending(pending),
            **self._status_params(),
        }
        _, method, token_id, verified_at, issued_at, expires_at, idx = await self._run(
            "finish_id_check", keys, params
        )
        return AttestationRecord(
            account_id=attempt.account_id,
            method=method,
            token_id=token_id,
            verified_at=float(verified_at),
            issued_at=float(issued_at),
            expires_at=float(expires_at),
            commercial_livestream=True,
            age_band=pending.age_band,
            status_idx=int(idx),
            id_type=pending.id_type,
        )

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        h = await self._hash(f"{self._prefix(platform)}acct:{account_id}")
        if not h:
            return None
        return _record(h), h.get("phone") or h.get("personal_id") or ""

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        pre = self._prefix(link.platform)
        keys = [
            f"{pre}acct:{link.guardian_account_id}",
            f"{pre}acct:{link.child_account_id}",
            f"{pre}childlink:{link.child_account_id}",
            f"{pre}gkids:{link.guardian_subject}",
            f"{pre}agingout",
            f"{pre}audit",
            f"{pre}link:{link.link_id}",
        ]
        params = self._common(link.platform, link.now) | {
            "limits": _limits_json(limits),
            "link_id": link.link_id,
            "link_j": _j(link.link_id),
            "account": link.child_account_id,
            "account_j": _j(link.child_account_id),
            "guardian_account": link.guardian_account_id,
            "guardian_account_j": _j(link.guardian_account_id),
            "guardian_subject": link.guardian_subject,
            "guardian_j": _j(link.guardian_subject),
            "guardian_token_id": link.guardian_token_id,
            "guardian_ref": link.guardian_ref,
            "relationship": link.relationship,
            "relationship_j": _j(link.relationship),
            "child_consent": "1" if link.child_consent else "0",
            "aged_out_at": _time(link.aged_out_at),
            "attestation": self._pending(link.attestation),
            **self._status_params(),
        }
        reply = await self._run("link_guardian", keys, params)
        return LinkResult(reply[1], _record(_pairs(reply[3:])), reply[2] == "1")

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        pre = self._prefix(platform)
        params = self._common(platform, now) | {
            "link_j": _j(link_id),
            "reason": reason,
            "reason_j": _j(reason),
            "revoke_reason_j": _j(f"guardian_link_{reason}"),
        }
        reply = await self._run(
            "end_guardian_link", [f"{pre}link:{link_id}", f"{pre}audit"], params
        )
        return _record(_pairs(reply[1:])) if len(reply) > 1 else None

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        pre = self._prefix(platform)
        params = self._common(platform, now) | {"limit": max(0, int(limit))}
        if params["limit"] == 0:
            return 0
        _, count = await self._run("sweep_aged_out", [f"{pre}agingout", f"{pre}audit"], params)
        return int(count)

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        if limit <= 0 or to_time <= from_time:
            return []
        low = from_time if after is None else max(from_time, after.aged_out_at)
        params = {
            "min": _time(low),
            "to": _time(to_time),
            "limit": int(limit),
            "after": "0" if after is None else "1",
            "after_score": _time(after.aged_out_at if after else 0.0),
            "after_member": after.account_id if after else "",
        }
        params |= self._common(platform, from_time, audited=False)
        reply = await self._run("list_aging_out", [f"{self._prefix(platform)}agingout"], params)
        return [AgingOut(reply[i], float(reply[i + 1])) for i in range(1, len(reply) - 1, 2)]

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        check_reason_code(reason)
        pre = self._prefix(platform)
        params = self._common(platform, now) | {
            "account_j": _j(account_id),
            "reason_j": _j(reason),
        }
        reply = await self._run(
            "revoke_attestation", [f"{pre}acct:{account_id}", f"{pre}audit"], params
        )
        return _record(_pairs(reply[1:]))

    # ---- account locks (R7) -------------------------------------------------------------

    async def lock_account(self, request: LockRequest) -> tuple[AccountLock, bool]:
        pre = self._prefix(request.platform)
        params = self._common(request.platform, request.now) | {
            "account": request.account_id,
            "account_j": _j(request.account_id),
            "kind": request.kind.value,
            "lock_until": "" if request.until is None else _time(request.until),
            "reason": request.reason,
            "reason_j": _j(request.reason),
            "request_reference": request.request_reference,
            "request_j": _j(request.request_reference),
        }
        keys = [f"{pre}lock:{request.account_id}", f"{pre}locks", f"{pre}audit"]
        reply = await self._run("lock_account", keys, params)
        return _lock(_pairs(reply[2:])), reply[1] == "1"

    async def unlock_account(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AccountLock | None:
        pre = self._prefix(platform)
        params = self._common(platform, now) | {
            "account": account_id,
            "account_j": _j(account_id),
            "reason": reason,
            "reason_j": _j(reason),
        }
        keys = [f"{pre}lock:{account_id}", f"{pre}locks", f"{pre}audit"]
        reply = await self._run("unlock_account", keys, params)
        return _lock(_pairs(reply[1:])) if len(reply) > 1 else None

    async def account_state(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord | None, AccountLock | None]:
        # One bare script (no prelude), not a pipeline: measured on loopback, about as cheap
        # as the single HGETALL it replaces; a two-command pipeline cost ~1.5x in redis-py.
        pre = self._prefix(platform)
        keys = [f"{pre}acct:{account_id}", f"{pre}lock:{account_id}"]
        try:
            raw = await self._scripts["account_state"].run(self._redis, keys, [])
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e
        reply = [_text(part) for part in raw]
        n = int(reply[1])
        a, lk = _pairs(reply[2 : 2 + n]), _pairs(reply[2 + n :])
        return (_record(a) if a else None), (_lock(lk) if lk else None)

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        pre = self._prefix(platform)
        params = self._common(platform, now, audited=False)
        reply = await self._run("locked_status_indexes", [f"{pre}locks"], params)
        return sorted(int(i) for i in reply[1:])

    async def status_bits(self, platform: str) -> bytes:
        key = f"{self._prefix(platform)}sl:bits"
        try:
            raw = await self._redis.execute_command("GET", key, **{NEVER_DECODE: True})
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e
        return bytes(raw or b"")

    async def _hash(self, key: str) -> dict[str, str]:
        try:
            raw = await self._redis.hgetall(key)
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e
        return {_text(k): _text(v) for k, v in raw.items()}

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int:
        if self._audit is not None:
            return await self._audit.append_audit(
                platform, now, account=account, event=event, outcome=outcome, reason=reason, **extra
            )
        # Python renders the record; the script only inserts the sequence number it assigns.
        record = audit_record(
            seq=0,
            now=now,
            platform=platform,
            account=account,
            event=event,
            outcome=outcome,
            reason=reason,
            **extra,
        )
        head, tail = split_audit_record(record)
        params = self._common(platform, now) | {"head": head, "tail": tail}
        _, index = await self._run("append_audit", [f"{self._prefix(platform)}audit"], params)
        return int(index)

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        h = await self._hash(f"{self._prefix(platform)}acct:{account_id}")
        return _record(h) if h else None

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        if self._audit is not None:
            return await self._audit.audit_records(platform, start, stop)
        key = f"{self._prefix(platform)}audit"
        try:
            if start >= 0 and (stop is None or stop >= 0):
                if stop is not None and stop <= start:
                    return []
                raw = await self._redis.lrange(key, start, -1 if stop is None else stop - 1)
            else:  # negative bounds need the length; Python's slice rules apply
                raw = (await self._redis.lrange(key, 0, -1))[start:stop]
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e
        return [_text(r) for r in raw]

    async def ping(self) -> None:
        """Redis answers; on a cluster, every primary answers and each one sees the
        cluster ok (`cluster_state:ok`: every slot served), so the health probe fails
        while any slot, whichever platform or account it holds, cannot be reached."""
        try:
            if isinstance(self._redis, RedisCluster):
                states = await self._redis.execute_command(
                    "CLUSTER INFO", target_nodes=RedisCluster.PRIMARIES
                )
                if any(info.get("cluster_state") != "ok" for info in states.values()):
                    raise StoreUnavailable()
            else:
                await self._redis.ping()
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()
