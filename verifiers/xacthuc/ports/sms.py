"""The SMS port: what the verification flow needs from an SMS channel, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One text message. `text` holds the one-time code: never log it or `to`."""

    to: str  # E.164, for example "+84912345678"
    text: str
    message_id: str  # unique per message and stable across retries, so a gateway can de-duplicate

    def __repr__(self) -> str:  # keep the number and the code out of any accidental log line
        return f"SmsMessage(message_id={self.message_id!r})"


class SmsDeliveryError(Exception):
    """The channel did not accept the message. The message text never appears in it."""


class SmsSender(Protocol):
    """Two methods: send one message (raising SmsDeliveryError), and release resources."""

    async def send(self, message: SmsMessage) -> None: ...

    async def aclose(self) -> None: ...
