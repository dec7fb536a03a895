"""Logging configured as the server does it, into a buffer, for tests that read log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from xacthuc.server.logs import LogFormat, configure_logging


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        """Every line written so far, parsed (JSON format)."""
        return [json.loads(line) for line in self.text.splitlines() if line]


@contextmanager
def capture_logs(level: str = "DEBUG", fmt: LogFormat = LogFormat.JSON) -> Iterator[Captured]:
    """`configure_logging` into a buffer; the root logger and structlog are restored after."""
    root = logging.getLogger()
    handlers, old_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(level, fmt, stream)
    try:
        yield Captured(stream)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(old_level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
