"""Guardian links in the embedded store: R1, P6 (see memory_state.py)."""

from __future__ import annotations

from dataclasses import replace

from xacthuc.adapters.store.memory_state import (
    _OVER_16,
    MemoryBase,
    _active,
    _Link,
    _Platform,
)
from xacthuc.domain.errors import (
    ChildAlreadyLinked,
    ChildNotUnder16,
    GuardianChildLimit,
    GuardianNotVerified,
    GuardianUnder18,
    IdempotencyKeyReused,
    LinkAlreadyEnded,
    LinkNotFound,
    XacthucError,
)
from xacthuc.domain.records import AgingOut, AttestationRecord, GuardianLink, Limits, LinkResult


class GuardianOps(MemoryBase):
    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        return self._platforms[platform].attestations.get(account_id)

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        p = self._platforms[link.platform]
        now = link.now
        child = link.child_account_id
        current = p.child_links.get(child)
        if link.link_id in p.link_calls:
            if p.link_calls[link.link_id] != link.request_digest:
                error = IdempotencyKeyReused()
                self._link_audit(p, link, "guardian_link_created", "refused", error.reason)
                raise error
            return self._link_replay(p, link, current)
        guardian = p.attestations.get(link.guardian_account_id)
        renewing = current is not None and p.links[current].guardian == link.guardian_subject
        g, subject = guardian if guardian else (None, "")
        try:
            if (
                g is None
                or not _active(g, now)
                or g.guardian_managed
                or g.token_id != link.guardian_token_id
                or subject != link.guardian_subject
            ):
                raise GuardianNotVerified()
            if g.age_band == "16_17":
                raise GuardianUnder18()
            mine = p.attestations.get(child)
            if mine is not None and _active(mine[0], now) and mine[0].age_band in _OVER_16:
                raise ChildNotUnder16()
            if current is not None and not renewing:
                raise ChildAlreadyLinked()
            children = p.guardian_children[link.guardian_subject]
            if not renewing and len(children) >= limits.max_children_per_guardian:
                raise GuardianChildLimit()
        except XacthucError as e:
            self._link_audit(p, link, "guardian_link_created", "refused", e.reason)
            raise
        a = link.attestation
        if renewing:
            assert current is not None
            row = p.links[current]
            row.relationship, row.method = link.relationship, a.method
            row.child_consent, row.renewed, row.aged_out_at = (
                link.child_consent,
                now,
                link.aged_out_at,
            )
            link_id = current
        else:
            link_id = link.link_id
            p.links[link_id] = _Link(
                link_id=link_id,
                child=child,
                guardian_account=link.guardian_account_id,
                guardian=link.guardian_subject,
                relationship=link.relationship,
                method=a.method,
                child_consent=link.child_consent,
                created=now,
                renewed=now,
                aged_out_at=link.aged_out_at,
            )
            p.child_links[child] = link_id
            p.guardian_children[link.guardian_subject].add(child)
        p.aging[child] = link.aged_out_at
        p.link_calls[link.link_id] = link.request_digest
        event = "guardian_link_renewed" if renewing else "guardian_link_created"
        self._link_audit(p, link, event, "ok", "", link=link_id, method=a.method)
        for party, given in (("guardian", True), ("child", link.child_consent)):
            if given:
                self._audit(
                    p,
                    link.platform,
                    now,
                    account=child,
                    event="consent_recorded",
                    outcome="ok",
                    link=link_id,
                    party=party,
                )
        previous = p.attestations.get(child)
        if previous is not None and _active(previous[0], now):
            self._revoke(p, link.platform, now, previous[0], "superseded")
        record = AttestationRecord(
            account_id=child,
            method=a.method,
            token_id=a.token_id,
            verified_at=now,
            issued_at=a.issued_at,
            expires_at=a.expires_at,
            guardian_managed=True,
            age_band="under_16",
            guardian_ref=link.guardian_ref,
            aged_out_at=link.aged_out_at,
            link_id=link_id,
            status_idx=self._next_status_idx(p),
        )
        self._attest(p, record, "")
        self._audit(
            p,
            link.platform,
            now,
            account=child,
            event="attestation_issued",
            outcome="ok",
            token_id=a.token_id,
            method=a.method,
            expires=int(a.expires_at),
            guardian_managed=1,
            age_band="under_16",
        )
        return LinkResult(link_id, record, renewing)

    @staticmethod
    def _link_replay(p: _Platform, link: GuardianLink, current: str | None) -> LinkResult:
        """A link call retried under its id with the same request digest (an idempotency key's
        retry; another digest is IDEMPOTENCY_KEY_REUSED, audited as a refused link, before
        this): nothing written, nothing audited; the link it
        created or renewed and the child's attestation under it, as they are now, or
        LinkAlreadyEnded when that link has ended (or the attestation is no longer its)."""
        row = p.links[current] if current is not None else None
        found = p.attestations.get(link.child_account_id)
        if (
            row is None
            or row.guardian != link.guardian_subject
            or found is None
            or found[0].link_id != row.link_id
        ):
            raise LinkAlreadyEnded()
        return LinkResult(row.link_id, found[0], row.link_id != link.link_id)

    def _link_audit(
        self,
        p: _Platform,
        g: GuardianLink,
        event: str,
        outcome: str,
        reason: str,
        **extra: str | int,
    ) -> None:
        self._audit(
            p,
            g.platform,
            g.now,
            account=g.child_account_id,
            event=event,
            outcome=outcome,
            reason=reason,
            guardian=g.guardian_subject,
            guardian_account=g.guardian_account_id,
            relationship=g.relationship,
            **extra,
        )

    def _end_link(self, p: _Platform, platform: str, row: _Link, now: float, reason: str) -> None:
        row.ended, row.end_reason = now, reason
        del p.child_links[row.child]
        p.guardian_children[row.guardian].discard(row.child)
        del p.aging[row.child]
        self._audit(
            p,
            platform,
            now,
            account=row.child,
            event="guardian_link_ended",
            outcome="ok",
            reason=reason,
            link=row.link_id,
            guardian=row.guardian,
        )

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        p = self._platforms[platform]
        row = p.links.get(link_id)
        if row is None or row.ended is not None:
            error = LinkNotFound() if row is None else LinkAlreadyEnded()
            self._audit(
                p,
                platform,
                now,
                account=row.child if row else "",
                event="guardian_link_ended",
                outcome="refused",
                reason=error.reason,
                link=link_id,
            )
            raise error
        self._end_link(p, platform, row, now, reason)
        found = p.attestations.get(row.child)
        if found is None or found[0].link_id != link_id or found[0].status != "active":
            return None
        return self._revoke(p, platform, now, found[0], f"guardian_link_{reason}")

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        p = self._platforms[platform]
        due = sorted((t, child) for child, t in p.aging.items() if t <= now)[: max(0, limit)]
        for _, child in due:
            row = p.links[p.child_links[child]]
            self._end_link(p, platform, row, now, "aged_out")
            found = p.attestations.get(child)
            if (
                found is not None
                and found[0].link_id == row.link_id
                and found[0].status == "active"
            ):
                p.attestations[child] = (replace(found[0], status="aged_out"), found[1])
        return len(due)

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        p = self._platforms[platform]
        # Ordered as Redis orders a sorted set: by score, then by the member's bytes (UTF-8
        # preserves code-point order, so Python's string order is the same).
        entries = sorted(
            (t, child)
            for child, t in p.aging.items()
            if from_time <= t < to_time
            and (after is None or (t, child) > (after.aged_out_at, after.account_id))
        )
        return [AgingOut(child, t) for t, child in entries[: max(0, limit)]]
