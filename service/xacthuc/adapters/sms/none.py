"""Dev-mode default sender: the message goes nowhere (XACTHUC_SMS_BACKEND=none).

Nothing is printed, so a dev server shows no code unless the console sender is chosen
explicitly (`scripts/serve.sh` does) or the number is a test number (XACTHUC_TEST_NUMBERS).
Production mode refuses to start with it.
"""

from __future__ import annotations

import logging

from xacthuc.ports.sms import SmsMessage

log = logging.getLogger(__name__)


class DiscardingSmsSender:
    async def send(self, message: SmsMessage) -> None:
        # The message id only: never the number or the text (which holds the code).
        log.info(
            "SMS %s not sent: XACTHUC_SMS_BACKEND=none (choose console to print codes, or "
            "use test numbers)",
            message.message_id,
        )

    async def aclose(self) -> None:
        return None
