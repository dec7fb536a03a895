"""Dev-mode sender: writes the SMS to the console so a developer can read the code.

It is the development channel itself, not a log; production mode refuses to start with it.
"""

from __future__ import annotations

import sys
from typing import TextIO

from xacthuc.ports.sms import SmsMessage


class ConsoleSmsSender:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    async def send(self, message: SmsMessage) -> None:
        print(f"[dev SMS to {message.to}] {message.text}", file=self._stream, flush=True)

    async def aclose(self) -> None:
        return None
