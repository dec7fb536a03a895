"""What the audit log reports about itself, for whatever metrics system the shell runs."""

from __future__ import annotations

from typing import Protocol


class LogMetrics(Protocol):
    def tree_size(self, platform: str, size: int) -> None: ...

    def checkpoint_signed(self, platform: str) -> None: ...

    def checkpoint_refused(self, platform: str) -> None: ...

    def leaf_mismatch(self, platform: str) -> None: ...


class NoLogMetrics:
    """Reports nothing (tests, tools)."""

    def tree_size(self, platform: str, size: int) -> None:
        pass

    def checkpoint_signed(self, platform: str) -> None:
        pass

    def checkpoint_refused(self, platform: str) -> None:
        pass

    def leaf_mismatch(self, platform: str) -> None:
        pass
