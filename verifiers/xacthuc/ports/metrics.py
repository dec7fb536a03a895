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


class FlowMetrics(Protocol):
    """What the verification flows report, per platform. Label values are bounded: platform
    ids (one per configured API key), outcomes and reasons from fixed sets; never an account."""

    def sms_send(self, platform: str, outcome: str, seconds: float) -> None:
        """One SMS handed to the channel: outcome "sent", "failed" (the channel refused or
        gave up) or "error" (anything else, cancellation included)."""

    def registry_call(self, platform: str, outcome: str, seconds: float) -> None:
        """One question to the identity registry: "match", "no_match" or "unavailable"."""

    def refused(self, platform: str, reason: str) -> None:
        """A budget or a lock said no (a RESOURCE_EXHAUSTED reason, e.g. SEND_LIMIT_EXCEEDED)."""


class NoFlowMetrics:
    """Reports nothing (tests, tools)."""

    def sms_send(self, platform: str, outcome: str, seconds: float) -> None:
        pass

    def registry_call(self, platform: str, outcome: str, seconds: float) -> None:
        pass

    def refused(self, platform: str, reason: str) -> None:
        pass
