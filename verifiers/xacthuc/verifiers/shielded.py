"""Work that must finish even when its caller gives up, with its outcome never lost.

`asyncio.shield` keeps an SMS send or a registry check running after the RPC that started it
is cancelled (the client went away, its deadline passed), so no half-made challenge or
unrecorded attempt is left behind. But nobody then awaits the shielded task: an exception it
ends with would only surface, when the task is collected, as asyncio's "Task exception was
never retrieved" with a traceback at ERROR. `shielded` retrieves that outcome instead and
logs it once: an expected failure (a `XacthucError`: gateway, registry or store down) as
one WARNING line with its reason and no traceback, a bug at ERROR with its traceback, as
the RPC path logs one; named only by what the caller chose (never a secret).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from xacthuc.domain.errors import XacthucError

log = logging.getLogger(__name__)

T = TypeVar("T")

# The event loop keeps only weak references to tasks: an orphaned one is kept here until done.
_orphans: set[asyncio.Task[Any]] = set()


async def shielded(work: Coroutine[Any, Any, T], *, what: str) -> T:
    """Await `work` to completion even if this caller is cancelled. `what` names the work in
    the log line written when it ends after its caller left (for example "SMS send of
    challenge ch_..."): no phone number, code, address or personal data."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.cancelled():  # the caller went, not the work
            _orphans.add(task)
            task.add_done_callback(functools.partial(_outcome, what))
        raise


def _outcome(what: str, task: asyncio.Task[Any]) -> None:
    """Retrieve and log the outcome of work whose caller had gone."""
    _orphans.discard(task)
    if task.cancelled():
        log.warning("%s was cancelled after its caller had gone", what)
        return
    error = task.exception()  # retrieved: asyncio will not report it again
    if error is None:
        log.info("%s finished after its caller had gone", what)
    elif isinstance(error, XacthucError):
        # Expected outcomes (gateway or store down): the state was rolled back or recorded.
        log.warning("%s failed after its caller had gone: %s", what, error.reason)
    else:  # a bug: the traceback is wanted, as for any unexpected error of an RPC
        log.error("%s failed after its caller had gone", what, exc_info=error)
