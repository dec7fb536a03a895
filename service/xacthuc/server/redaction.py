"""Scrubbing of personal data from log events (policy P9), as the last step before rendering.

The service itself never logs a phone number, an ID number, a name, a date of birth or a
code; this is the net under a developer who does by mistake, in the message, in its
arguments, in `extra` fields (stdlib) or key-value pairs (structlog), or in a traceback.

Two kinds of rule:
- by field name: a key that names personal data (`full_name`, `name`, `date_of_birth`,
  `dob`, `birth*`, `phone*`, `personal_id*`, `code`, `otp`, ...) has its whole value
  replaced, whether it is an event key, a nested dict key, or `key=value` / `"key": "value"`
  text inside a message;
- by shape, anywhere in text: Vietnamese phone numbers in any usual format (`0912345678`,
  `091 234 5678`, `+84 91...`, `84912345678`, `0084...`), 12-digit personal identification
  numbers (also grouped by three), date-looking values without a time of day (`2010-05-17`,
  `17/05/2010`, `datetime.date(2010, 5, 17)`), and any standalone run of exactly six digits
  (the shape of a one-time code: a false positive costs a counter, a miss leaks a code).
  An int field is matched by the same shapes as its digits (a code, an 84-prefixed number).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"

# Words that, as a field name or its last `_`-separated part(s), name personal data.
_SENSITIVE_WORDS = (
    r"full_?name|name|names|ho_?ten|dob|birth[a-z0-9_]*|date_of_birth|ngay_?sinh|"
    r"phone[a-z0-9_]*|msisdn|mobile|to|personal_id[a-z0-9_]*|id_number|national_id|cccd|cmnd|"
    r"otp|code|codes|passcode|pin|password|secret|api_key|authorization"
)
_SENSITIVE_KEY = re.compile(rf"(?:^|_)(?:{_SENSITIVE_WORDS})$", re.IGNORECASE)
# Keys whose values may hold several words (a person's name): `full_name=Nguyễn Văn An`.
_NAME_KEY = re.compile(r"(?:^|_)(?:full_?name|name|names|ho_?ten)$", re.IGNORECASE)
# Keys structlog and our own processors add, never personal data.
_OWN_KEYS = frozenset({"level", "logger", "timestamp"})

_DATE_REPR = re.compile(r"datetime\.date\(\s*\d{1,4}\s*,\s*\d{1,2}\s*,\s*\d{1,2}\s*\)")
# `key=value`, `key: value`, `"key": "value"`, `'key': 'value'`: every key is found, the
# value of a sensitive one replaced (`_key_values`).
_KEY = re.compile(r"""(?<![A-Za-z0-9_])["']?(?P<name>[A-Za-z_][A-Za-z0-9_]*)["']?\s*[=:]\s*""")
_VALUE = re.compile(
    r"""(?P<value>\[[A-Z_]+\]|"[^"]*"|'[^']*'|[^\s,;&)\]}]+)"""
    r"""(?P<more>(?:[ \t]+[^\W\d_][^\s,;&)\]}=:]*+(?![=:]))*)"""
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\(?\+\s?84\)?[ .-]?|0084[ .-]?|84[ .-]?|0)(?:\(0\)[ .-]?)?\d(?:[ .-]?\d){8,9}(?!\w)"
)
_PERSONAL_ID = re.compile(r"(?<!\w)\d{3}(?:[ .-]?\d{3}){3}(?!\w)")
_DATE = re.compile(
    r"(?<![\w.:/-])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})"
    r"(?![\w:]|[ T]\d{1,2}:|[-/.]\d)"
)
_SIX_DIGITS = re.compile(r"(?<![\w.])\d{6}(?!\w|\.\d)")
_MAYBE = re.compile(r"[0-9=:]")
_DIGIT = re.compile(r"[0-9]")


def sensitive_key(key: str) -> bool:
    """Whether a field of this name holds personal data (its value is dropped whole)."""
    return bool(_SENSITIVE_KEY.search(key))


def _key_values(text: str) -> str:
    """`text` with the value after each sensitive key replaced (a name: all its words)."""
    parts: list[str] = []
    done = 0
    for key in _KEY.finditer(text):
        if key.start() < done or not sensitive_key(key.group("name")):
            continue
        value = _VALUE.match(text, key.end())
        if value is None:
            continue
        multiword = _NAME_KEY.search(key.group("name")) is not None
        end = value.end() if multiword else value.end("value")
        parts += [text[done : key.end()], REDACTED]
        done = end
    return "".join(parts) + text[done:] if parts else text


def scrub_text(text: str) -> str:
    """`text` with every personal-data shape replaced by a placeholder."""
    if not _MAYBE.search(text):
        return text  # nothing of a secret's shape: the common case, kept cheap
    if "=" in text or ":" in text:
        text = _DATE_REPR.sub("[DATE]", text)
        text = _key_values(text)
    if not _DIGIT.search(text):
        return text
    text = _DATE_REPR.sub("[DATE]", text)
    text = _PHONE.sub("[PHONE]", text)
    text = _PERSONAL_ID.sub("[PERSONAL_ID]", text)
    text = _DATE.sub("[DATE]", text)
    return _SIX_DIGITS.sub("[OTP]", text)


def scrub_value(value: Any) -> Any:
    """A log value with personal data removed: text scrubbed, dates dropped, containers
    walked, any other object replaced by its scrubbed repr (JSON would repr it anyway)."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):  # a code or a number held as an int has the same digits
        text = str(value)
        scrubbed = scrub_text(text)
        return value if scrubbed == text else scrubbed
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return "[DATE]"
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and sensitive_key(k) else scrub_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_value(v) for v in value]
    return scrub_text(repr(value))


def redact(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub every field of the event (message, arguments already
    formatted into it, extra fields, the rendered traceback)."""
    for key, value in event_dict.items():
        if key in _OWN_KEYS:  # structlog's own `_record` meta is removed before this runs
            continue
        if key != "event" and sensitive_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = scrub_value(value)
    return event_dict
