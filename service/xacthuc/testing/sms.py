"""An SMS channel for tests: keeps every message so a test can read the code it carries."""

from __future__ import annotations

import re
import threading

from xacthuc.domain.fictional import TEST_NUMBERS_DESCRIPTION
from xacthuc.domain.phone import normalize_vn_mobile
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage

_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


class CapturingSmsSender:
    """Satisfies `xacthuc.ports.sms.SmsSender`; safe to read from the test's thread while the
    server's thread sends. Set `fail = True` to make every send fail as a gateway outage
    would (the service then answers SMS_DELIVERY_FAILED)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[SmsMessage] = []
        self.fail = False

    async def send(self, message: SmsMessage) -> None:
        if self.fail:
            raise SmsDeliveryError("gateway down (xacthuc.testing)")
        with self._lock:
            self._messages.append(message)

    async def aclose(self) -> None:
        return None

    @property
    def messages(self) -> list[SmsMessage]:
        """Every message sent so far, oldest first (`to` is E.164, `message_id` the challenge id)."""
        with self._lock:
            return list(self._messages)

    def messages_to(self, phone_number: str) -> list[SmsMessage]:
        """The messages sent to a number, in any format the service accepts (`0912345678`,
        `+84 91 234 5678`, ...), oldest first."""
        e164 = normalize_vn_mobile(phone_number)
        return [m for m in self.messages if m.to == e164]

    def last_code(self, phone_number: str) -> str:
        """The code of the latest SMS sent to `phone_number`; LookupError when none was."""
        sent = self.messages_to(phone_number)
        if not sent:
            raise LookupError(
                f"no SMS was sent to {phone_number!r} (nothing is sent to {TEST_NUMBERS_DESCRIPTION}: "
                "their code is the fixed test code)"
            )
        return code_in(sent[-1].text)

    def code_for(self, challenge_id: str) -> str:
        """The code sent for one challenge (`Challenge.challenge_id`)."""
        for m in reversed(self.messages):
            if m.message_id == challenge_id:
                return code_in(m.text)
        raise LookupError(f"no SMS was sent for challenge {challenge_id!r}")

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


def code_in(text: str) -> str:
    """The 6-digit code in an SMS text."""
    found = _CODE.search(text)
    if found is None:
        raise LookupError("the SMS text holds no 6-digit code")
    return found.group(1)
