"""The Redis half of the pair store (issue 10, `pair.py`): the ephemeral state only.

On one Redis server each operation is one Lua script, one round trip, one atomic step; on a
Redis Cluster its steps (`lua/steps.lua`, each over one subject's keys, so one slot) are
scripts of their own, sent in the operation's order (docs/design/redis-cluster.md). The
scripts keep what may be lost at the price of a user asking for a new code: challenges in
flight (which also hold their idempotency keys), send budgets and cool-downs (P3), failure
counters and lock-outs (P2, P5). Everything durable (attestations, revocations, the status
list, P8 counts, guardian links, locks, the audit log) is PostgreSQL's (`pair.py`): the
scripts take its facts as parameters (`P.facts`) and hand their audit records back
(`P.outbox`), which the `audit` sink stores before the call answers. This module names the
keys, encodes the parameters, runs the steps on a cluster and turns the replies into
results or exceptions.

Key layout: tagged by the subject each key protects, so one platform spreads over every
master of a cluster and every step's keys share a slot:

    <ns>:<pl>:{n:<tag>}:c:<record name>  string: the challenge, packed (common.lua,
                                         challenge_of: state sending -> pending -> consumed,
                                         attempts, times, the rest of its id, a 16-byte
                                         digest of its account, pseudonyms, 128 bits of its
                                         code's MAC), under its number's tag (the id's
                                         characters 4-5), named by records.py
                                         challenge_record (with an idempotency key, the
                                         key's slot: the record is also the key's)
    <ns>:<pl>:{n:<tag>}:p:<phone>        string: the number's P2 state (fails, lock_level,
                                         locked_until), last_send and its send times of the
                                         last day (P3), packed (phone_of)
    <ns>:<pl>:{k:<bucket>}:k             hash, one of 256: field an idempotency key's slot,
                                         value the challenge it claims (expiry, id)
    <ns>:<pl>:{i:<bucket>}:i             hash, one of 256: field an address's pseudonym
                                         (packed), value its send times of the hour
    <ns>:<pl>:{pl:<pl>}:pl               list: the platform's send times of the last hour,
                                         oldest first, one packed double each
    <ns>:<pl>:{a:<account>}:idg|idatt    hash: the account's ID-check failures and lock-out
                                         (P5); zset: its ID-check attempts of the hour
    <ns>:<pl>:{id:<number>}:idg|idatt    the same for a personal ID number

Challenges and claims expire `challenge_retention_seconds` after the challenge does, send
windows after their window, phone state a day after its last activity or lock.

Memory (issue 11): a pending challenge costs two small keys (c:, p:), a field in a claim
bucket, a field in an address bucket and one list entry: 612 bytes at 2,000 starts, 560 at
20,000, whatever the account id's length (up to 128 characters); Redis spends ~200 bytes on
a key whatever its value and ~40 on a field of a small hash, so claims and address logs are
fields, values are packed (times as 8-byte doubles, hex pseudonyms and MACs as bytes) and
nothing is stored twice. The challenge keeps its account as a digest (`_account_digest`),
not in full: every call naming a challenge (check_code, confirm_sent, abort_challenge) passes
the account id, which the audit records take from the call. The challenge value is 108 bytes,
which with its string header fills jemalloc's 112-byte class. `benchmarks/run.py` prints the
bytes per pending challenge (worst case: 128-character account ids);
tests/test_redis_memory.py holds the bound. The send logs keep times only, not challenge
ids: undoing a send removes one entry of its time, which leaves the same counts.
Expiry only reclaims memory: every rule is decided from the caller's `now`, as in memory.
The namespace and platform must not contain `{` or `}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from functools import cache
from importlib import resources
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
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
from xacthuc.domain.records import (
    AUDIT_FORMAT_VERSION,
    CHALLENGE_PREFIX,
    SLOT_CHARS,
    TAG_CHARS,
    ChallengeView,
    CodeCheck,
    IdAttempt,
    Limits,
    NewChallenge,
    audit_record,
    challenge_record,
    challenge_tag,
    number_tag,
)

_SCRIPTS = (
    "start_challenge",
    "confirm_sent",
    "abort_challenge",
    "check_code",
    "begin_id_check",
    "finish_id_check",
)

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
def _lua(name: str) -> str:
    """The prelude shared by all scripts and the steps (steps.lua), then the operation's own
    body (`lua/<name>.lua`), run as a function so that the script answers {records, reply}
    (its outbox, then its reply) whichever `return` of the body answered."""
    folder = resources.files("xacthuc.adapters.store") / "lua"
    return _with_prelude((folder / f"{name}.lua").read_text("utf-8"))


@cache
def _step_lua(step: str, keys: int) -> str:
    """A script of one step of steps.lua over its `keys` keys (one subject: one slot): what a
    Redis Cluster runs where one server runs an operation's whole script."""
    args = ", ".join(f"KEYS[{i}]" for i in range(1, keys + 1))
    return _with_prelude(f"return {step}({args})")


def _with_prelude(body: str) -> str:
    folder = resources.files("xacthuc.adapters.store") / "lua"
    return "\n".join(
        (
            (folder / "common.lua").read_text("utf-8"),
            (folder / "steps.lua").read_text("utf-8"),
            "local function body()",
            body,
            "end",
            "return { OUTBOX, body() }",
        )
    )


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

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# A challenge keeps the first 128 bits of its code's MAC (HMAC-SHA256, hex), and a check
# compares as many (issue 11: one size class less per challenge in Redis): forging one still
# takes the MAC key.
_MAC_CHARS = 32


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


def _flag(value: bool) -> str:
    return "1" if value else ""


def _time(value: float) -> str:
    """A time for Lua: repr() is the shortest text that reads back as the same double."""
    return repr(float(value))


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
    """Where the scripts' audit records are stored: PostgreSQL (`pg_audit.GroupAppender`).
    Records come rendered by the scripts, their `seq` to be assigned by the sink."""

    async def append(self, platform: str, records: Sequence[str]) -> int: ...

    async def ready(self) -> None:
        """Raise StoreUnavailable when the sink is known to be out of reach."""
        ...


async def eval_script(
    script: LuaScript, client: Any, keys: Sequence[str], params: dict[str, Any], audit: AuditSink
) -> tuple[list[str], list[str]]:
    """One EVALSHA of a prelude script: its records (its outbox) and its reply. A lost
    connection is StoreUnavailable; while `audit` is known to be down the script is not
    sent: a state change whose records could not be stored must not happen."""
    await audit.ready()
    try:
        reply = await script.run(client, keys, [_encode_params(params)])
    except _UNAVAILABLE as e:
        raise StoreUnavailable() from e
    records, reply = reply[0], (reply[1] if len(reply) > 1 else [])
    return [_text(r) for r in records], [_text(part) for part in reply]


async def run_script(
    script: LuaScript,
    client: Any,
    keys: Sequence[str],
    params: dict[str, Any],
    audit: AuditSink,
) -> list[str]:
    """`eval_script`, the records stored in `audit` before this returns (a refusal too is
    audited)."""
    records, reply = await eval_script(script, client, keys, params, audit)
    if records:
        await audit.append(params["platform"], records)
    return reply


class RedisStore:
    """The Redis half of the pair store (`pair.PairStore`): the ephemeral steps of the
    operations that have one, on Redis 7 or a Redis Cluster. Not a `Store` on its own.

    Each script hands back the records it wrote (its outbox) and the call returns, or raises
    its refusal, only once `audit` (PostgreSQL's `pg_audit.GroupAppender`) has stored them; while
    `audit` is known to be down no script is sent.

    A given `client` is used as is and left open by `aclose`; without one, the store opens
    its own from `url` (`redis_client`: `redis+cluster://` names a Redis Cluster). Whatever
    `Retry` the client has (redis-py retries three times by default), every script changes
    state and is sent once (`without_retries`): one whose reply was lost may have run, so it
    must not run twice; the caller gets StoreUnavailable and retries (with its idempotency
    key, or the same code: the pair's confirm is idempotent).
    """

    def __init__(
        self,
        url: str,
        *,
        audit: AuditSink,
        namespace: str = "xacthuc",
        client: RedisClient | None = None,
    ) -> None:
        self._audit = audit
        self._owns_client = client is None
        self._redis: RedisClient = client if client is not None else redis_client(url)
        self._namespace = namespace
        self._once = without_retries(self._redis)
        self._scripts = {name: LuaScript(_lua(name)) for name in _SCRIPTS}
        self._steps: dict[str, LuaScript] = {}  # a cluster's: a script per step

    @property
    def client(self) -> RedisClient:
        """The redis-py client in use (for instrumentation at composition)."""
        return self._redis

    @property
    def once_client(self) -> Any:
        """The client of the scripts: `client`'s connections, each command sent once
        (`without_retries`). Instrument it too, unless `clustered`."""
        return self._once

    @property
    def clustered(self) -> bool:
        """Whether Redis is a cluster: then `once_client` sends its commands through
        `client` (a `ClusterOnce`), and instrumenting `client` traces them too."""
        return isinstance(self._redis, RedisCluster)

    def _prefix(self, platform: str) -> str:
        return f"{self._namespace}:{platform}:"

    def _number(self, platform: str, phone: str) -> str:
        """The prefix of a number's keys: its tag (records.py number_tag)."""
        return f"{self._prefix(platform)}{{n:{number_tag(phone)}}}:"

    def _challenge_key(self, platform: str, challenge_id: str) -> tuple[str, str, str]:
        """The key of a challenge's record, the record's name and the rest of the id (common.lua
        challenge_key): under the tag the id carries; an id not of the service's form under
        the tag its own text hashes to (one server only: such an id names no number)."""
        head, tail = challenge_record(challenge_id)
        tag = challenge_tag(challenge_id) or number_tag(challenge_id)
        return f"{self._prefix(platform)}{{n:{tag}}}:c:{head}", head, tail

    def _claim_key(self, platform: str, challenge_id: str) -> tuple[str, str]:
        """The bucket of the idempotency claims an id of the service's form would be in, and
        its field, the key's slot (steps.lua: 256 buckets by the slot's first 8 bits);
        ("", "") for other ids."""
        if challenge_tag(challenge_id) is None:
            return "", ""
        slot = challenge_id[len(CHALLENGE_PREFIX) + TAG_CHARS :][:SLOT_CHARS]
        bucket = f"{slot[0]}{_B64URL.index(slot[1]) >> 4}"
        return f"{self._prefix(platform)}{{k:{bucket}}}:k", slot

    def _platform_key(self, platform: str) -> str:
        return f"{self._prefix(platform)}{{pl:{platform}}}:pl"

    def _ip_key(self, platform: str, client: str) -> str:
        """The bucket of an address's sends (steps.lua reserve_ip, common.lua ip_key)."""
        bucket = hashlib.sha1(client.encode()).hexdigest()[:2]  # noqa: S324  (a bucket, not a MAC)
        return f"{self._prefix(platform)}{{i:{bucket}}}:i"

    def _common(self, platform: str, now: float) -> dict[str, Any]:
        """The parameters every script reads."""
        return {
            "prefix": self._prefix(platform),
            "now": _time(now),
            "time_j": _j(rfc3339(now)),
            "platform_j": _j(platform),
            "platform": platform,
            "audit_version": str(AUDIT_FORMAT_VERSION),
        }

    async def _run(self, name: str, keys: Sequence[str], params: dict[str, Any]) -> list[str]:
        """One EVALSHA (`run_script`); a refusal becomes its exception."""
        reply = await run_script(self._scripts[name], self._once, keys, params, self._audit)
        if reply[0] == "err":
            raise _refusal(reply[1], reply[2], reply[3])
        return reply

    async def _step(
        self, step: str, keys: Sequence[str], params: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """One step of steps.lua as a script of its own (a cluster: its keys are one
        subject's, one slot): its records, not yet stored, and its reply."""
        script = self._steps.get(step)
        if script is None:
            script = self._steps[step] = LuaScript(_step_lua(step, len(keys)))
        return await eval_script(script, self._once, keys, params, self._audit)

    async def _steps_together(
        self, *calls: tuple[str, Sequence[str], dict[str, Any]]
    ) -> list[tuple[list[str], list[str]]]:
        """Steps of different subjects sent at once (one round trip of latency); their
        records in the order of `calls`. The first failure is raised once all have ended."""
        done = await asyncio.gather(*(self._step(*c) for c in calls), return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return cast(list[tuple[list[str], list[str]]], done)

    async def _store(self, platform: str, records: list[str]) -> None:
        if records:
            await self._audit.append(platform, records)

    async def start_challenge(
        self, new: NewChallenge, limits: Limits, *, linked: bool, full: bool
    ) -> ChallengeView:
        """Idempotency, R1 and P8 (PostgreSQL's facts: `linked`, a linked child; `full`,
        no room for the account on the number), P2 lock, P3 cool-down and budgets, then
        the challenge is created ("sending")."""
        ch_key, head, tail = self._challenge_key(new.platform, new.challenge_id)
        keys = [
            ch_key,
            f"{self._number(new.platform, new.phone)}p:{new.phone}",
            self._platform_key(new.platform),
            self._ip_key(new.platform, new.client),
        ]
        claim, slot = self._claim_key(new.platform, new.challenge_id)
        if new.idempotency_key:
            keys.append(claim)
        params = self._common(new.platform, new.now) | {
            "head": head,
            "tail": tail,
            "tag": challenge_tag(new.challenge_id) or "",
            "slot": slot,
            "keyed": "1" if new.idempotency_key else "",
            "limits": _limits_json(limits),
            "challenge_id": new.challenge_id,
            "challenge_j": _j(new.challenge_id),
            "account_j": _j(new.account_id),
            "account_digest": _account_digest(head, new.account_id),
            "phone": new.phone,
            "phone_j": _j(new.phone),
            "client": new.client,
            "client_j": _j(new.client),
            "code_mac": new.code_mac[:_MAC_CHARS],
            "expires_at": _time(new.expires_at),
            "facts": {"linked": _flag(linked), "full": _flag(full)},
            "claimed_at": "",
        }
        if self.clustered:
            reply = await self._start_by_steps(new, keys, params)
        else:
            reply = await self._run("start_challenge", keys, params)
        status, challenge_id, expires_at, resend_not_before = reply[:4]
        return ChallengeView(
            challenge_id, float(expires_at), float(resend_not_before), status == "replay"
        )

    async def _start_by_steps(
        self, new: NewChallenge, keys: list[str], params: dict[str, Any]
    ) -> list[str]:
        """start_challenge.lua's sequence on a cluster, a script per subject: the key's claim,
        the number's step, then the platform's and the address's budgets together (undone
        together when one refuses). Records are stored in the order of the steps, before
        this returns or raises."""
        ch_key, ph_key, pl_key, ip_key = keys[:4]
        claim = keys[4] if new.idempotency_key else ""
        records: list[str] = []
        try:
            own, earlier = False, ""
            if claim:
                recs, r = await self._step("claim_start", [claim], params)
                records += recs
                if r[0] == "err":
                    raise _refusal(r[1], r[2], r[3])
                own, earlier = r[0] == "free", (r[1] if r[0] == "free" else "")
                if r[0] == "claimed":
                    params = params | {"claimed_at": r[2]}
            recs, n = await self._step("start_number", [ch_key, ph_key], params)
            records += recs
            if n[0] == "replay":
                return n
            abandoned_at, abandoned_client, abandoned_id = n[4], n[5], n[6]
            if abandoned_at:  # a challenge abandoned by its start, undone: its entries go
                release = params | {"release": abandoned_at, "release_client": abandoned_client}
                await self._steps_together(
                    ("release_platform", [pl_key], release),
                    ("release_ip", [self._ip_key(new.platform, abandoned_client)], release),
                )
            # Whichever challenge the claim names, if the start is refused, goes with it.
            unclaim = params | {"release_id": new.challenge_id if own else abandoned_id}
            if n[0] == "err":
                if claim and unclaim["release_id"]:
                    await self._step("claim_release", [claim], unclaim)
                raise _refusal(n[1], n[2], n[3])
            budgets = await asyncio.gather(
                self._step("reserve_platform", [pl_key], params),
                self._step("reserve_ip", [ip_key], params),
                return_exceptions=True,
            )
            refused = next(
                (b[1] for b in budgets if not isinstance(b, BaseException) and b[1][0] == "err"),
                None,
            )
            failed = next((b for b in budgets if isinstance(b, BaseException)), None)
            if refused is not None or failed is not None:
                records.pop()  # the start's record: it is refused (or unknown) after all
                release = params | {"release": params["now"], "release_client": new.client}
                undo: list[tuple[str, Sequence[str], dict[str, Any]]] = [
                    ("unstart_number", [ch_key], params)
                ]
                for key, kind, b in zip((pl_key, ip_key), ("platform", "ip"), budgets, strict=True):
                    if not isinstance(b, BaseException) and b[1][0] == "ok":
                        undo.append((f"release_{kind}", [key], release))
                if claim and unclaim["release_id"]:
                    undo.append(("claim_release", [claim], unclaim))
                await self._steps_together(*undo)
                if failed is not None:
                    raise failed
                assert refused is not None
                records.append(self._start_refused(new, refused[1]))
                raise _refusal(refused[1], refused[2], refused[3])
            after: list[tuple[str, Sequence[str], dict[str, Any]]] = []
            if claim and not own:
                after.append(("claim_set", [claim], params))  # the claimed one was replaced
            if earlier:  # the key's expired challenge, of another number: replaced
                earlier_key = self._challenge_key(new.platform, earlier)[0]
                if earlier_key != ch_key:
                    after.append(("drop_record", [earlier_key], params))
            if after:
                await self._steps_together(*after)
            return n
        finally:
            await self._store(new.platform, records)

    def _start_refused(self, new: NewChallenge, reason: str) -> str:
        """The record of a start refused by a budget step (steps.lua start_refused's)."""
        return audit_record(
            seq=0,
            now=new.now,
            platform=new.platform,
            account=new.account_id,
            event="verification_started",
            outcome="refused",
            reason=reason,
            phone=new.phone,
            client=new.client,
            method="phone_otp",
        )

    def _challenge_params(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> tuple[str, dict[str, Any]]:
        """The key of the challenge's record and the parameters naming the challenge and its
        account (confirm_sent, abort_challenge, check_code)."""
        ch_key, head, tail = self._challenge_key(platform, challenge_id)
        return ch_key, self._common(platform, now) | {
            "challenge_id": challenge_id,
            "slot": self._claim_key(platform, challenge_id)[1],
            "challenge_j": _j(challenge_id),
            "tail": tail,
            "account_j": _j(account_id),
            "account_digest": _account_digest(head, account_id),
        }

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        ch_key, params = self._challenge_params(platform, challenge_id, account_id, now)
        await self._run("confirm_sent", [ch_key], params)

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        ch_key, params = self._challenge_params(platform, challenge_id, account_id, now)
        claim = self._claim_key(platform, challenge_id)[0]
        if not self.clustered:
            await self._run(
                "abort_challenge", [ch_key, self._platform_key(platform), claim], params
            )
            return
        # abort_challenge.lua's sequence: the number's step, then the releases together.
        records, r = await self._step("abort_number", [ch_key], params)
        try:
            if len(r) > 1:
                release = params | {
                    "release": r[1],
                    "release_client": r[2],
                    "release_id": challenge_id,
                }
                calls: list[tuple[str, Sequence[str], dict[str, Any]]] = [
                    ("release_platform", [self._platform_key(platform)], release),
                    ("release_ip", [self._ip_key(platform, r[2])], release),
                ]
                if claim:
                    calls.append(("claim_release", [claim], release))
                await self._steps_together(*calls)
        finally:
            await self._store(platform, records)

    async def check_code(self, check: CodeCheck, limits: Limits) -> str | None:
        """Count the attempt, compare in constant time, P2; the right code consumes the
        challenge (and again on a consumed one: the same call retried, no attempt counted).
        Returns the number's pseudonym on the right code, None when the challenge is gone
        (PostgreSQL may know what it issued); raises the refusal otherwise."""
        ch_key, params = self._challenge_params(
            check.platform, check.challenge_id, check.account_id, check.now
        )
        params |= {
            "limits": _limits_json(limits),
            "candidates": [c[:_MAC_CHARS] for c in check.candidates],
        }
        reply = await self._run("check_code", [ch_key], params)
        return reply[1] if reply[0] == "ok" else None

    def _id_keys(self, attempt: IdAttempt) -> list[str]:
        """The account's and the number's failure state and hourly windows."""
        pre = self._prefix(attempt.platform)
        account, number = f"{pre}{{a:{attempt.account_id}}}:", f"{pre}{{id:{attempt.subject}}}:"
        return [f"{account}idg", f"{account}idatt", f"{number}idg", f"{number}idatt"]

    def _id_params(self, attempt: IdAttempt, limits: Limits) -> dict[str, Any]:
        return self._common(attempt.platform, attempt.now) | {
            "limits": _limits_json(limits),
            "account_j": _j(attempt.account_id),
            "attempt_id": attempt.attempt_id,
            "attempt_j": _j(attempt.attempt_id),
            "subject_j": _j(attempt.subject),
            "client_j": _j(attempt.client),
            "purpose": attempt.purpose,
            "purpose_j": _j(attempt.purpose),
            "id_type_j": _j(attempt.id_type),
        }

    async def begin_id_check(
        self, attempt: IdAttempt, limits: Limits, *, linked: bool, active: bool, managed: bool
    ) -> None:
        """Lock-outs and hourly windows of the account and the number, then R1/R3/R4 from
        PostgreSQL's facts; the attempt counted in both windows."""
        params = self._id_params(attempt, limits) | {
            "facts": {"linked": _flag(linked), "active": _flag(active), "managed": _flag(managed)}
        }
        keys = self._id_keys(attempt)
        if not self.clustered:
            await self._run("begin_id_check", keys, params)
            return
        # begin_id_check.lua's sequence: the account's step, then the number's.
        records, a = await self._step("id_begin_account", keys[:2], params)
        try:
            if a[0] == "err":
                raise _refusal(a[1], a[2], a[3])
            recs, b = await self._step("id_begin_number", keys[2:], params | {"account_full": a[2]})
            records += recs
            if b[0] == "err":
                if a[1] == "1":
                    await self._step("id_release", keys[1:2], params)
                raise _refusal(b[1], b[2], b[3])
        finally:
            await self._store(attempt.platform, records)

    async def finish_id_check(self, attempt: IdAttempt, answer: str, limits: Limits) -> None:
        """The registry's answer: failures counted (lock-outs) or reset, the windows
        refunded as the contract says; returns on a match, raises the refusal otherwise."""
        params = self._id_params(attempt, limits) | {"answer": answer}
        keys = self._id_keys(attempt)
        if not self.clustered:
            await self._run("finish_id_check", keys, params)
            return
        # finish_id_check.lua's two steps, together; the account's records first.
        (ra, a), (rb, b) = await self._steps_together(
            ("id_finish", keys[:2], params | {"scope": "account"}),
            ("id_finish", keys[2:], params | {"scope": "personal_id"}),
        )
        await self._store(attempt.platform, ra + rb)
        if answer == "unavailable":
            raise _refusal(RegistryUnavailable.reason, "", "")
        if answer == "match":
            return
        for scope, r in (("account", a), ("personal_id", b)):
            if r[0] == "locked":
                raise _refusal(IdAttemptsExceeded.reason, r[1], scope)
        raise _refusal(PersonalIdNotMatched.reason, "", "")

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
