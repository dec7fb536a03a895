"""Times typed by auditors: the CLI (`xacthuc audit report --from/--to`) and the console API
read them alike, and refuse a time without an offset, naming the expected form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xacthuc.cli.main import main
from xacthuc.domain.clock import INSTANT_FORM, parse_instant

JAN_1_IN_VIETNAM = 1798736400.0  # 2027-01-01T00:00:00+07:00

WITHOUT_OFFSET = ("2027-01-01", "2027-01-01T00:00:00", "2027-01-01 00:00")
SAME_INSTANT = ("2027-01-01T00:00:00+07:00", "2026-12-31T17:00:00Z", "2026-12-31T17:00:00+00:00")


@pytest.mark.parametrize("text", SAME_INSTANT)
def test_a_time_with_an_offset_is_one_instant(text: str) -> None:
    assert JAN_1_IN_VIETNAM == parse_instant(text)


@pytest.mark.parametrize("text", WITHOUT_OFFSET)
def test_a_time_without_an_offset_is_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="has no offset") as refused:
        parse_instant(text)
    assert INSTANT_FORM in str(refused.value)
    assert "2027-01-01T00:00:00+07:00" in INSTANT_FORM


def test_a_time_that_is_no_time_is_refused_naming_the_form() -> None:
    with pytest.raises(ValueError, match="must be an RFC 3339 time with an offset"):
        parse_instant("yesterday")


@pytest.mark.parametrize("text", WITHOUT_OFFSET)
def test_the_cli_refuses_a_time_without_an_offset(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to read it as Vietnam time while the console refused it: usage error (2)."""
    export = tmp_path / "log.jsonl"
    export.write_text("")
    for flag in ("--from", "--to"):
        assert 2 == main(["audit", "report", str(export), flag, text])
        err = capsys.readouterr().err
        assert f"{flag} {text!r} has no offset: must be {INSTANT_FORM}" in err


def test_the_cli_reads_every_offset_form_as_the_same_instant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "log.jsonl"
    export.write_text("")
    for text in SAME_INSTANT:
        assert 0 == main(["audit", "report", str(export), "--from", text])
        out, _ = capsys.readouterr()
        assert "2026-12-31T17:00:00.000Z" == json.loads(out)["from"]
