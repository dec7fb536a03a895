"""Redis memory per pending phone challenge (issue 11 item 5), on a private redis-server.

The measurement is benchmarks/redis_memory.py's (INFO used_memory before and after N starts
through the real start path, distinct numbers, accounts, idempotency keys and client IPs), with
a smaller N; the server is the test's own, started on a free port, never the shared one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from redis_memory import measure, private_redis  # benchmarks/ is no package: on the path above

from xacthuc.server.request_bounds import ACCOUNT_ID

# Issue 11's bound for the challenge state of one pending challenge (three small keys and a
# list entry), worst case: 128-character account ids (the challenge keeps a 16-byte digest of
# its account, so the id's length does not count). Measured 651-654 bytes at 2,000-20,000
# starts, short or longest ids (Redis 7.0, jemalloc; the figure moves with the hash tables'
# growth steps); 1,555-1,625 before issue 11, 777-782 with 128-character ids kept in full.
BOUND_WITHOUT_AUDIT = 700
# With the two audit records each start writes while the audit log lives in Redis: they carry
# the account id in full (~550 bytes more with ~10-character ids, ~815 with 128 characters;
# the audit records themselves are not made smaller).
BOUND_WITH_AUDIT = 1_250
BOUND_WITH_AUDIT_LONGEST_IDS = 1_550
STARTS = 2_000


async def test_a_pending_challenge_costs_less_than_the_bound_with_the_longest_account_ids() -> None:
    """2,000 starts with nothing shared and 128-character account ids, the worst case: the
    bytes per pending challenge stay under the bound, with and without the audit records."""
    with private_redis() as url:
        figure = await measure(url, STARTS, account_chars=ACCOUNT_ID)
    assert figure.without_audit <= BOUND_WITHOUT_AUDIT, figure
    assert figure.with_audit <= BOUND_WITH_AUDIT_LONGEST_IDS, figure


async def test_the_challenge_state_does_not_grow_with_the_account_id() -> None:
    """Short account ids ("acct-<n>-") cost the challenge state what the longest ones cost (a
    digest is kept, not the id), within a few bytes of the hash tables' noise; their audit
    records stay under the bound set for them."""
    with private_redis() as url:
        short = await measure(url, STARTS, account_chars=0)
    with private_redis() as url:
        longest = await measure(url, STARTS, account_chars=ACCOUNT_ID)
    assert short.without_audit <= BOUND_WITHOUT_AUDIT, short
    assert short.with_audit <= BOUND_WITH_AUDIT, short
    assert abs(longest.without_audit - short.without_audit) <= 8, (short, longest)
