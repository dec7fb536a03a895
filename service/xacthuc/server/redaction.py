"""Scrubbing of personal data from log events (policy P9), as the last step before rendering.

The service itself never logs a phone number, an ID number, a name, a date of birth or a
code; this is the net under a developer who does by mistake, in the message, in its
arguments, in `extra` fields (stdlib) or key-value pairs (structlog), or in a traceback.

Three kinds of rule:
- by field name: a key that names personal data (`full_name`, `name`, `date_of_birth`,
  `dob`, `birth*`, `phone*`, `personal_id*`, `code`, `otp`, `to`, ...) has its whole value
  replaced, whether it is an event key, a nested dict key, or `key=value` / `"key": "value"`
  text inside a message. A key is named by its last `_`-separated part, so `guardian_name`
  and `sms_code` are personal; `code`, `name` and `to` after a qualifier that says what
  they are of (`reason_code`, `status_code`, `event_name`, `method_name`, `redirect_to`:
  `_NOT_PERSONAL`) are not, and their values are only scrubbed by shape;
- by shape, anywhere in text: Vietnamese phone numbers in any usual format (`0912345678`,
  `091 234 5678`, `+84 91...`, `84912345678`, `0084...`), 12-digit personal identification
  numbers (also grouped by three), date-looking values without a time of day or at midnight
  (`2010-05-17`, `17/05/2010`, `2010-05-17 00:00:00`, `datetime.date(2010, 5, 17)`,
  `datetime.datetime(2010, 5, 17, 0, 0)`), any standalone run of exactly six digits (the
  shape of a one-time code: a false positive costs a counter, a miss leaks a code), and a
  person's name: two to six capitalised words (or all capitals) led by a common Vietnamese
  family name (`Nguyễn Văn An`, `TRẦN THỊ B`, `Nguyen Van An`; the ASCII spellings of the
  short family names that are also English words, `Le`, `Do`, `Ho`, ..., only before `Van`
  or `Thi`). A name not led by one of those family names is not recognised in free text;
- by type: a `date` is `[DATE]`, and so is a `datetime` at midnight (in its own zone or, when
  aware, in Vietnam's): the form a date of birth takes in a datetime; other datetimes are
  written as ISO text. An int field is matched by the same shapes as its digits (a code, an
  84-prefixed number), except under a key that names a quantity or a position (`count`,
  `size`, `index`, `total`, `bytes`, ...: `_QUANTITIES`), which no code or number is: there
  it stays an int. In text every six-digit run is still taken for a code.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that, as a field name or its last `_`-separated part(s), name personal data.
_SENSITIVE_WORDS = (
    r"full_?name|ho_?ten|dob|birth[a-z0-9_]*|date_of_birth|ngay_?sinh|"
    r"phone[a-z0-9_]*|msisdn|mobile|personal_id[a-z0-9_]*|id_number|national_id|cccd|cmnd|"
    r"otp|passcode|pin|password|secret|api_key|authorization"
)
_SENSITIVE_KEY = re.compile(rf"(?:^|_)(?:{_SENSITIVE_WORDS})$", re.IGNORECASE)
# `code`, `name` and `to` are personal alone or after any qualifier but these, which say
# what kind of code, name or destination the value is (never a person's).
_QUALIFIED_KEY = re.compile(
    r"(?:^|(?:^|_)(?P<qualifier>[a-z0-9]+)_)(?P<word>code|codes|name|names|to)$", re.IGNORECASE
)
_NOT_PERSONAL: dict[str, frozenset[str]] = {
    "code": _words(
        "reason status error err exit return result response http grpc rpc country place "
        "province region area currency language lang locale postal zip hash op opcode "
        "event kind type state"
    ),
    "name": _words(
        "event method logger file host hostname service key field module func function class "
        "table app queue metric span server task thread process platform db database index "
        "column attr attribute param setting env header type kind state status rpc route "
        "handler topic channel bucket label tag role action rule reason error test job node "
        "pod container image algorithm alg"
    ),
    "to": _words(
        "redirect set changed up due valid moved points maps upgraded downgraded scaled "
        "rounded bound converted"
    ),
}
# Keys whose values may hold several words (a person's name): `full_name=Nguyễn Văn An`.
_NAME_KEY = re.compile(r"(?:^|_)(?:full_?name|name|names|ho_?ten)$", re.IGNORECASE)
# Int fields under these keys (the last `_`-separated part) are quantities or positions.
_QUANTITIES = _words(
    "count counts total size bytes length len index idx offset position pos seq sequence "
    "records entries items rows leaves depth capacity limit generation version port pid "
    "ms us ns seconds millis micros nanos elapsed duration"
)
# Keys structlog and our own processors add, never personal data.
_OWN_KEYS = frozenset({"level", "logger", "timestamp"})

_DATE_REPR = re.compile(
    r"datetime\.date\(\s*\d{1,4}\s*,\s*\d{1,2}\s*,\s*\d{1,2}\s*\)"
    # A datetime at midnight (hour and minute, maybe seconds and microseconds, all zero),
    # with any tzinfo (its repr nests parentheses two deep at most).
    r"|datetime\.datetime\(\s*\d{1,4}\s*,\s*\d{1,2}\s*,\s*\d{1,2}(?:\s*,\s*0){2,4}\s*"
    r"(?:,\s*(?:tzinfo|fold)=(?:[^(),]|\((?:[^()]|\([^()]*\))*\))*)*\)"
)
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
# A date with a midnight time of day is a date (`2010-05-17 00:00:00`, `...T00:00+07:00`).
_MIDNIGHT = re.compile(
    r"(?<![\w.:/-])\d{4}-\d{1,2}-\d{1,2}[ T]00:00(?::00(?:[.,]0+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"(?![\w:]|[.,]\d)"
)
_SIX_DIGITS = re.compile(r"(?<![\w.])\d{6}(?!\w|\.\d)")
_MAYBE = re.compile(r"[0-9=:]")
_DIGIT = re.compile(r"[0-9]")
# Common Vietnamese family names (about nine in ten people), with and without diacritics.
_FAMILY = _words(
    "Nguyễn Nguyen Trần Tran Lê Phạm Pham Hoàng Hoang Huỳnh Huynh Phan Vũ Vu Võ Vo Đặng Dang "
    "Bùi Bui Đỗ Hồ Ngô Ngo Dương Duong Lý Lương Luong Trương Truong Đinh Dinh Đoàn Doan "
    "Trịnh Trinh Đào Dao Lâm Phùng Phung Tô Hà Tạ Châu Quách Quach Kiều Kieu Triệu Trieu "
    "Lưu Luu Thái Mạc Đàm Dam Lục Tăng Vương Vuong Diệp Diep Từ Khổng Khong Cao Mai"
)
# Their ASCII spellings that are also English words name a person only before Van or Thi.
_SHORT_FAMILY = _words("Le Do Ho Ly Lam To Ha Ta Chau Thai Mac Luc Tang Tu")
# Upper-case letters of the Latin scripts (Vietnamese included), for `re`, which has no \p{Lu}.
_UPPER = re.escape(
    "".join(ch for ch in map(chr, [*range(0x41, 0x250), *range(0x1E00, 0x1F00)]) if ch.isupper())
)
# A word in Title case or capitals, maybe hyphenated (`An-Bình`).
_CAPITALISED = rf"[{_UPPER}][^\W\d_]*(?:-[^\W\d_]+)*"


def _either_case(names: frozenset[str]) -> str:
    return "|".join(f"{n}|{n.upper()}" for n in sorted(names, key=lambda n: (-len(n), n)))


_NAME = re.compile(
    rf"(?<![\w-])(?=[{_UPPER}])(?:(?:{_either_case(_FAMILY)})(?:[ ]{_CAPITALISED}){{1,5}}"
    rf"|(?:{_either_case(_SHORT_FAMILY)})[ ](?:Van|Thi|VAN|THI)(?:[ ]{_CAPITALISED}){{0,4}})"
    r"(?!\w)"
)


@functools.lru_cache(maxsize=1024)
def sensitive_key(key: str) -> bool:
    """Whether a field of this name holds personal data (its value is dropped whole).
    Remembered per name (field names are the code's few, not data): every log line asks
    it of each of its fields, the access line of every call six times."""
    if _SENSITIVE_KEY.search(key):
        return True
    found = _QUALIFIED_KEY.search(key)
    if found is None:
        return False
    qualifier = found.group("qualifier")
    word = found.group("word").lower().rstrip("s")
    return qualifier is None or qualifier.lower() not in _NOT_PERSONAL[word]


def _quantity_key(key: object) -> bool:
    return isinstance(key, str) and key.rsplit("_", 1)[-1].lower() in _QUANTITIES


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
    text = _NAME.sub("[NAME]", text)
    if not _MAYBE.search(text):
        return text  # nothing else of a secret's shape: the common case, kept cheap
    if "=" in text or ":" in text:
        text = _DATE_REPR.sub("[DATE]", text)
        text = _key_values(text)
    if not _DIGIT.search(text):
        return text
    text = _DATE_REPR.sub("[DATE]", text)
    text = _MIDNIGHT.sub("[DATE]", text)
    text = _PHONE.sub("[PHONE]", text)
    text = _PERSONAL_ID.sub("[PERSONAL_ID]", text)
    text = _DATE.sub("[DATE]", text)
    return _SIX_DIGITS.sub("[OTP]", text)


_VIETNAM = datetime.timezone(datetime.timedelta(hours=7))  # no DST since 1975


def _date_like(value: datetime.datetime) -> bool:
    """Midnight in its own zone, or (aware) in Vietnam's: a date in a datetime."""
    times = [value.timetz()]
    if value.utcoffset() is not None:
        times.append(value.astimezone(_VIETNAM).timetz())
    return any(t.replace(tzinfo=None) == datetime.time() for t in times)


def scrub_value(value: Any, key: object = None) -> Any:
    """A log value (of the field `key`, if any) with personal data removed: text scrubbed,
    dates dropped, containers walked, any other object replaced by its scrubbed repr (JSON
    would repr it anyway)."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):  # a code or a number held as an int has the same digits
        if _quantity_key(key):
            return value  # a count, a size, a position: no code or number is one
        text = str(value)
        scrubbed = scrub_text(text)
        return value if scrubbed == text else scrubbed
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, datetime.datetime):
        return "[DATE]" if _date_like(value) else scrub_text(value.isoformat())
    if isinstance(value, datetime.date):
        return "[DATE]"
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and sensitive_key(k) else scrub_value(v, k)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_value(v, key) for v in value]
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
            event_dict[key] = scrub_value(value, key)
    return event_dict
