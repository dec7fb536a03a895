"""The embedded store's send windows (memory_state `_in_window`, `_add_in_window`): kept in
time order and searched, they count and date exactly as a pass over the list in append order
did, also when the clock steps back."""

from __future__ import annotations

import random

from xacthuc.adapters.store.memory_state import _add_in_window, _in_window, _recent


def test_windows_count_and_date_as_a_pass_over_the_list_does() -> None:
    rng = random.Random(11)
    for _ in range(200):
        window = rng.choice([5.0, 60.0, 900.0])
        limit = rng.randint(1, 6)
        kept: list[tuple[float, str]] = []
        appended: list[tuple[float, str]] = []  # the former layout: append order
        now = 1_000.0
        for i in range(rng.randint(1, 60)):
            now += rng.uniform(-3.0, 4.0 if rng.random() < 0.9 else 2 * window)  # steps back too
            recent = _recent(appended, now, window)
            assert _in_window(kept, now, window) == len(recent)
            if len(recent) >= limit:
                assert kept[-limit][0] == sorted(t for t, _ in recent)[-limit]
            entry = (now, f"ch_{i}")
            _add_in_window(kept, entry, now, window)
            appended = [*recent, entry]
            assert sorted(kept) == sorted(appended)
            assert [t for t, _ in kept] == sorted(t for t, _ in kept)
