"""Full-jitter back-off, the one computation behind the adapters' retry loops."""

from __future__ import annotations

import pytest

from xacthuc.domain.backoff import check_retry_options, full_jitter


def test_the_ceiling_doubles_per_retry_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry n waits at most min(cap, base * 2**(n-1)), at least 0; a huge n stays finite."""
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr("xacthuc.domain.backoff.random.uniform", uniform)
    for n in (1, 2, 3, 4, 5, 10_000):
        full_jitter(n, base=0.2, cap=2.0)
    assert [(0.0, 0.2), (0.0, 0.4), (0.0, 0.8), (0.0, 1.6), (0.0, 2.0), (0.0, 2.0)] == drawn


def test_waits_are_drawn_below_the_ceiling() -> None:
    """Real draws stay inside [0, ceiling]."""
    assert all(0.0 <= full_jitter(3, base=0.5) <= 2.0 for _ in range(200))


@pytest.mark.parametrize(
    ("retries", "backoff_seconds", "word"),
    [(-1, 0.2, "retries"), (2, -0.1, "backoff"), (2, float("nan"), "backoff")],
)
def test_unusable_retry_options_are_refused(
    retries: int, backoff_seconds: float, word: str
) -> None:
    """Negative retries, or a back-off that is negative or not a number, is a ValueError."""
    with pytest.raises(ValueError, match=word):
        check_retry_options(retries, backoff_seconds)


def test_retries_count_from_one() -> None:
    """There is no retry 0: the first attempt is not a retry."""
    with pytest.raises(ValueError, match="from 1"):
        full_jitter(0, base=0.2)
