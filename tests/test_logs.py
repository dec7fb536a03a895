"""Structured logs: JSON lines, the call's context, and redaction of every kind of personal data."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from xacthuc.server.config import Settings
from xacthuc.server.logs import LogFormat, configure_logging, get_logger
from xacthuc.server.redaction import scrub_text, scrub_value, sensitive_key

from .logcapture import Captured, capture_logs

# One of each kind of secret, in the formats a developer might log them in.
PHONES = (
    "0912345678",
    "091 234 5678",
    "091.234.5678",
    "+84912345678",
    "+84 91 234 5678",
    "84912345678",
    "0084912345678",
)
PERSONAL_IDS = ("001099012345", "001 099 012 345")
CODES = ("482913", "750316")
NAME = "Nguyễn Văn An"
DATES = ("2010-05-17", "17/05/2010", "17.05.2010")
SECRETS = (*PHONES, *PERSONAL_IDS, *CODES, NAME, *DATES, "Nguyễn", "2010, 5, 17")
DIGITS_OF_SECRETS = ("912345678", "234 5678", "099012345", "012 345", "482913", "750316")


@pytest.fixture
def captured() -> Iterator[Captured]:
    """JSON logging into a buffer, as the server configures it."""
    with capture_logs() as logs:
        yield logs


def assert_no_secret(text: str) -> None:
    """No secret in `text`, nor in its JSON lines decoded (the JSON renderer writes
    non-ASCII letters as \\u escapes, so a name would not show in the raw text)."""
    decoded = [text]
    for line in text.splitlines():
        try:
            decoded.append(json.dumps(json.loads(line), ensure_ascii=False))
        except ValueError:
            continue
    for haystack in decoded:
        for secret in (*SECRETS, *DIGITS_OF_SECRETS):
            assert secret not in haystack, f"{secret!r} leaked into the log: {haystack}"


def test_stdlib_logger_secrets_in_message_args_and_extra_are_redacted(
    captured: Captured,
) -> None:
    """A stdlib logger call with every kind of secret in the message, its %-args and `extra`
    writes none of them, and keeps what is not personal data."""
    log = logging.getLogger("xacthuc.test.stdlib")
    log.warning(
        "verify account=u1 phone %s alt=%s id %s code=%s otp: %s full_name=%s dob=%s born %s "
        "and %s; SMS text: Ma xac thuc cua ban la %s",
        PHONES[0],
        PHONES[1],
        PERSONAL_IDS[0],
        CODES[0],
        CODES[1],
        NAME,
        DATES[0],
        DATES[1],
        datetime.date(2010, 5, 17),
        CODES[0],
        extra={
            "phone_number": PHONES[3],
            "full_name": NAME,
            "date_of_birth": datetime.date(2010, 5, 17),
            "dob": DATES[2],
            "code": CODES[1],
            "note": f"called from {PHONES[4]} and {PHONES[5]} / {PHONES[6]} / {PHONES[2]}",
            "ids": [PERSONAL_IDS[1]],
            "account_id": "u1",
        },
    )
    (line,) = captured.lines()
    assert_no_secret(captured.text)
    assert "warning" == line["level"]
    assert "xacthuc.test.stdlib" == line["logger"]
    assert "u1" == line["account_id"]
    assert "[REDACTED]" == line["full_name"] == line["phone_number"] == line["code"]
    assert line["event"].startswith("verify account=u1 phone [PHONE] alt=[PHONE] id [PERSONAL_ID]")
    assert "timestamp" in line


def test_structlog_logger_secrets_in_event_args_and_fields_are_redacted(
    captured: Captured,
) -> None:
    """A structlog logger call with every kind of secret, in the event, positional args and
    key-value fields, nested too, writes none of them."""
    log = get_logger("xacthuc.test.structlog")
    log.info(
        "confirm %s with %s for %s",
        PHONES[6],
        CODES[0],
        NAME,
        full_name=NAME,
        name=NAME,
        birth=DATES[0],
        phone=PHONES[2],
        personal_id_number=PERSONAL_IDS[0],
        request={"code": CODES[1], "child": {"date_of_birth": DATES[1]}, "to": PHONES[4]},
        text=f"Ma xac thuc cua ban la {CODES[1]}. Gui toi {PHONES[5]}, CCCD {PERSONAL_IDS[1]}",
        when=datetime.date(2010, 5, 17),
        attempts=3,
    )
    (line,) = captured.lines()
    assert_no_secret(captured.text)
    assert 3 == line["attempts"]
    assert "[DATE]" == line["when"]
    assert "confirm [PHONE] with [OTP] for " in line["event"]


def test_fields_named_with_a_leading_underscore_are_redacted_too(captured: Captured) -> None:
    """A field whose name starts with `_` (stdlib `extra`, structlog key) is scrubbed like any
    other: only structlog's own meta keys are dropped before redaction, nothing is exempt."""
    logging.getLogger("xacthuc.test.underscore").info(
        "sent", extra={"_otp": CODES[0], "_note": f"to {PHONES[0]} born {DATES[0]}"}
    )
    get_logger("xacthuc.test.underscore").info("sent", _code=CODES[1], _to=PHONES[3])
    assert 2 == len(captured.lines())
    assert_no_secret(captured.text)


def test_numbers_held_as_ints_are_redacted_by_shape(captured: Captured) -> None:
    """A code or an 84-prefixed phone number logged as an int field is scrubbed as its digits
    would be in text; other ints stay ints. (An int loses a number's leading 0, and with it
    the shape of a local phone or a personal ID number: those are caught only as text.)"""
    logging.getLogger("xacthuc.test.ints").info(
        "sent", extra={"n": int(CODES[0]), "m": int(PHONES[5]), "count": 3}
    )
    (line,) = captured.lines()
    assert_no_secret(captured.text)
    assert ("[OTP]", "[PHONE]", 3) == (line["n"], line["m"], line["count"])


def test_a_traceback_is_redacted_too(captured: Captured) -> None:
    """An exception whose message holds personal data is logged with its traceback scrubbed."""
    log = logging.getLogger("xacthuc.test.exc")
    try:
        raise ValueError(f"bad input phone={PHONES[0]} id {PERSONAL_IDS[0]} dob {DATES[0]}")
    except ValueError:
        log.exception("failed")
    (line,) = captured.lines()
    assert_no_secret(captured.text)
    assert "ValueError: bad input phone=[REDACTED] id [PERSONAL_ID] dob [DATE]" in line["exception"]


def test_console_format_is_redacted_as_well() -> None:
    """The dev console renderer goes through the same redaction."""
    with capture_logs("INFO", LogFormat.CONSOLE) as logs:
        logging.getLogger("xacthuc.test.console").info("sent %s to %s", CODES[0], PHONES[0])
    assert "sent [OTP] to [PHONE]" in logs.text
    assert_no_secret(logs.text)


def test_bound_context_goes_on_stdlib_and_structlog_lines(captured: Captured) -> None:
    """Values bound with contextvars (the call's request id) appear on every line."""
    with structlog.contextvars.bound_contextvars(request_id="req-1", method="GetJwks"):
        logging.getLogger("a").info("one")
        get_logger("b").info("two")
    logging.getLogger("a").info("three")
    one, two, three = captured.lines()
    assert ("req-1", "GetJwks") == (one["request_id"], one["method"])
    assert ("req-1", "GetJwks") == (two["request_id"], two["method"])
    assert "request_id" not in three


def test_log_level_is_applied(captured: Captured) -> None:
    """Records under the configured level are dropped."""
    configure_logging("WARNING", LogFormat.JSON, captured.stream)
    logging.getLogger("x").info("quiet")
    get_logger("x").info("quiet too")
    logging.getLogger("x").warning("loud")
    assert ["loud"] == [line["event"] for line in captured.lines()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("took 0.123456789 s", "took 0.123456789 s"),
        ("at 2026-11-29T09:00:00Z", "at 2026-11-29T09:00:00Z"),
        ("at 2026-11-29 09:00:00", "at 2026-11-29 09:00:00"),
        (
            "request id 3fa2b1c4d5e6f708a1b2c3d4e5f60718",
            "request id 3fa2b1c4d5e6f708a1b2c3d4e5f60718",
        ),
        ("listening on 127.0.0.1:50051", "listening on 127.0.0.1:50051"),
        ("client 203.0.113.7", "client 203.0.113.7"),
        (
            "reason=OTP_INCORRECT method=ConfirmPhoneVerification",
            "reason=OTP_INCORRECT method=ConfirmPhoneVerification",
        ),
        ("challenge ch_AbCdEfGhIjKlMnOpQrStUv", "challenge ch_AbCdEfGhIjKlMnOpQrStUv"),
        ("code=123456 for account u1", "code=[REDACTED] for account u1"),
        ('{"code": "123456"}', '{"code": [REDACTED]}'),
        ("{'dob': datetime.date(2010, 5, 17)}", "{'dob': [REDACTED]}"),
        ("name: Trần Thị B, phone_number=0987654321", "name: [REDACTED], phone_number=[REDACTED]"),
        ("guardian_date_of_birth=17/05/1980 ok", "guardian_date_of_birth=[REDACTED] ok"),
        ("(+84) 912-345-678", "[PHONE]"),
    ],
)
def test_scrub_text_keeps_what_is_not_personal(text: str, expected: str) -> None:
    """Timestamps, ids, addresses and reasons stay; secrets in every shape go."""
    assert expected == scrub_text(text)


def test_log_settings_are_validated() -> None:
    """XACTHUC_LOG_LEVEL must be a level; the format follows the mode unless set."""
    from xacthuc.server.config import ConfigError

    with pytest.raises(ConfigError, match="XACTHUC_LOG_LEVEL: must be one of DEBUG"):
        Settings.load(log_level="LOUD")
    assert LogFormat.CONSOLE == Settings.load().effective_log_format
    assert LogFormat.JSON == Settings.load(log_format="json").effective_log_format
    assert "DEBUG" == Settings.load(log_level="debug").log_level


def test_xacthuc_serve_writes_json_lines(tmp_path: Path) -> None:
    """`xacthuc serve` configures logging once at start: with XACTHUC_LOG_FORMAT=json every
    line it writes to stderr is a JSON object, from start to graceful stop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XACTHUC_")}
    env.update(XACTHUC_LOG_FORMAT="json", XACTHUC_LISTEN=f"127.0.0.1:{port}")
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xacthuc.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            for _ in range(600):
                if "xacthuc listening" in err.read_text():
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert 0 == proc.wait(timeout=30)
        finally:
            proc.kill()
    lines = [json.loads(line) for line in err.read_text().splitlines()]
    assert "stopped" == lines[-1]["event"]
    assert {"event", "level", "logger", "timestamp"} <= set(lines[0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("confirm for Nguyễn Văn An failed", "confirm for [NAME] failed"),
        ("Trần Thị B signed up", "[NAME] signed up"),
        ("holder NGUYỄN VĂN AN", "holder [NAME]"),
        ("holder Nguyen Van An, ok", "holder [NAME], ok"),
        ("Le Van Tam and Do Thi Hoa", "[NAME] and [NAME]"),
        ("Phạm Thị Hồng Nhung đã xác thực", "[NAME] đã xác thực"),
        ("Vũ An-Bình", "[NAME]"),
        ("nguyen said Tran Van B", "nguyen said [NAME]"),
        # Not names: one word, lower case, English words, a place.
        ("Nguyễn alone", "Nguyễn alone"),
        ("Do Not Disturb", "Do Not Disturb"),
        ("Ho Chi Minh City", "Ho Chi Minh City"),
        ("zone Asia/Ho_Chi_Minh", "zone Asia/Ho_Chi_Minh"),
        ("HTTP GET To The Store", "HTTP GET To The Store"),
    ],
)
def test_a_name_in_free_text_is_redacted_without_a_key(text: str, expected: str) -> None:
    """Capitalised words led by a common Vietnamese family name are a name wherever they are;
    the ASCII spellings that are English words only before Van or Thi."""
    assert expected == scrub_text(text)


def test_a_name_as_an_argument_is_not_written(captured: Captured) -> None:
    logging.getLogger("xacthuc.test.name").info("verified %s today", NAME)
    get_logger("xacthuc.test.name").info("verified", who=f"{NAME} (guardian)")
    one, two = captured.lines()
    assert_no_secret(captured.text)
    assert ("verified [NAME] today", "[NAME] (guardian)") == (one["event"], two["who"])


VIETNAM = datetime.timezone(datetime.timedelta(hours=7))


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2010, 5, 17),
        datetime.datetime(2010, 5, 17, tzinfo=VIETNAM),
        datetime.datetime(2010, 5, 17, tzinfo=datetime.UTC),
    ],
)
def test_a_datetime_holding_a_date_is_redacted(
    captured: Captured, value: datetime.datetime
) -> None:
    """A date of birth kept in a datetime (midnight) is a date: as a field, nested, as a %s or
    %r argument."""
    logging.getLogger("xacthuc.test.dt").info(
        "born %s / %r", value, value, extra={"when": value, "nested": {"at": [value]}}
    )
    (line,) = captured.lines()
    assert ("born [DATE] / [DATE]", "[DATE]", {"at": ["[DATE]"]}) == (
        line["event"],
        line["when"],
        line["nested"],
    )
    assert "2010" not in captured.text


def test_an_aware_datetime_at_midnight_in_vietnam_is_a_date_as_a_field() -> None:
    """As an object, a datetime is a date at midnight in Vietnam too, whatever its zone (in
    text, once formatted, only midnight in its own zone is recognised)."""
    born = datetime.datetime(2010, 5, 16, 17, 0, tzinfo=datetime.UTC)
    assert {"at": "[DATE]"} == scrub_value({"at": born})


def test_a_datetime_with_a_time_of_day_stays() -> None:
    """A timestamp is no date of birth: it is written as ISO text."""
    at = datetime.datetime(2026, 11, 29, 9, 30, 5, tzinfo=datetime.UTC)
    assert "2026-11-29T09:30:05+00:00" == scrub_value(at)
    assert "at 2026-11-29 09:30:05+00:00" == scrub_text(f"at {at}")
    assert "datetime.datetime(2026, 11, 29, 9, 30)" == scrub_text(
        repr(datetime.datetime(2026, 11, 29, 9, 30))
    )
    assert "dob [DATE], ok" == scrub_text("dob 2010-05-17 00:00:00, ok")
    assert "dob [DATE]" == scrub_text("dob 2010-05-17T00:00:00+07:00")


@pytest.mark.parametrize(
    "key",
    [
        "reason_code",
        "status_code",
        "error_code",
        "grpc_code",
        "place_code",
        "event_name",
        "method_name",
        "logger_name",
        "file_name",
        "redirect_to",
        "valid_to",
    ],
)
def test_keys_that_name_a_kind_of_code_name_or_target_are_kept(key: str) -> None:
    """`code`, `name` and `to` after a qualifier saying what they are of name no person."""
    assert not sensitive_key(key)
    assert f"{key}=OTP_INCORRECT ok" == scrub_text(f"{key}=OTP_INCORRECT ok")
    assert {key: "check_ok"} == scrub_value({key: "check_ok"})


@pytest.mark.parametrize(
    "key",
    [
        "code",
        "otp_code",
        "sms_code",
        "verification_code",
        "name",
        "guardian_name",
        "first_name",
        "user_name",
        "to",
        "send_to",
        "reply_to",
        "full_name",
        "phone_country_code",
    ],
)
def test_keys_that_may_hold_a_code_a_name_or_a_number_are_redacted(key: str) -> None:
    assert sensitive_key(key)
    assert f"{key}=[REDACTED], ok" == scrub_text(f"{key}=x, ok")


def test_a_code_in_a_kept_key_is_still_caught_by_its_shape() -> None:
    assert {"reason_code": "[OTP]"} == scrub_value({"reason_code": CODES[0]})
    assert "status_code=[OTP]" == scrub_text(f"status_code={CODES[0]}")


def test_quantities_held_as_ints_stay_ints(captured: Captured) -> None:
    """A count, size or position held as an int is no code: it stays an int, at any depth. An
    int under another key, or six digits in text (a count too), are still taken for a code."""
    logging.getLogger("xacthuc.test.counts").info(
        "rebuilt 250000 entries",
        extra={
            "count": 250000,
            "size": 131072,
            "tree_size": 482913,
            "index": 750316,
            "stats": {"total": 250000, "n": 250000},
            "n": 482913,
            "code": 482913,
            "entries": "250000",
        },
    )
    (line,) = captured.lines()
    assert (250000, 131072, 482913, 750316) == (
        line["count"],
        line["size"],
        line["tree_size"],
        line["index"],
    )
    assert {"total": 250000, "n": "[OTP]"} == line["stats"]
    assert ("[OTP]", "[REDACTED]", "[OTP]") == (line["n"], line["code"], line["entries"])
    assert "rebuilt [OTP] entries" == line["event"]
