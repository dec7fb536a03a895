"""Structured logs: one JSON object per line (or a readable console line in dev), set up once.

structlog renders both its own loggers and the standard library's (every module of ours
logs through `logging`), so there is one pipeline: the call's context (request id, method,
platform; bound by `xacthuc.server.rpc` with contextvars), level, logger name, `extra`
fields, the traceback as text, then `redaction.redact` over all of it, a UTC timestamp, and
the renderer. Nothing reaches the output without passing redaction.

`access` writes the one access line per RPC (`xacthuc.server.rpc`; XACTHUC_ACCESS_LOG).
"""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from typing import TextIO

import structlog
from structlog.typing import Processor

from xacthuc.server.redaction import redact

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogFormat(StrEnum):
    JSON = "json"  # one JSON object per line: for log shippers (production default)
    CONSOLE = "console"  # aligned, coloured when a terminal: for people (dev default)


def _processors(fmt: LogFormat) -> tuple[list[Processor], list[Processor]]:
    """The chain shared by structlog and stdlib records, and the one that renders."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,  # the traceback as text, so it is redacted too
        redact,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]
    return shared, final


def configure_logging(
    level: str = "INFO", fmt: LogFormat = LogFormat.JSON, stream: TextIO | None = None
) -> logging.Handler:
    """Route every log record, stdlib and structlog, through one redacting handler on the
    root logger (replacing the handlers there). Returns the handler."""
    shared, final = _processors(fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=final,
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return handler


ACCESS_LOGGER = "xacthuc.access"
_access = logging.getLogger(ACCESS_LOGGER)


def access_enabled() -> bool:
    """Whether `access` writes a line (its logger is on at INFO): callers skip gathering
    its fields otherwise."""
    return _access.isEnabledFor(logging.INFO)


def access(
    *, method: str, platform: str, grpc_status: str, reason: str, seconds: float, request_id: str
) -> None:
    """The access line of one RPC, at INFO on `xacthuc.access`: the method, the caller's
    platform ("" before authentication), the gRPC status, the stable reason ("OK" on
    success), the duration and the request id, as fields and in the message. Nothing from
    the request body; like every line it passes redaction (a request id shaped like a phone
    number is redacted)."""
    if not access_enabled():
        return
    duration_ms = round(seconds * 1000, 3)
    _access.info(
        "%s %s %s %.3f ms",
        method,
        grpc_status,
        reason,
        duration_ms,
        extra={
            "method": method,
            "platform": platform,
            "grpc_status": grpc_status,
            "reason": reason,
            "duration_ms": duration_ms,
            "request_id": request_id,
        },
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger that goes through the same pipeline (`log.info("event", key=value)`)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
