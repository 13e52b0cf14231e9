"""Fuzz the parsers of what an API client writes in a query or a document: the recordings
listing's ``cursor``, the ISO-8601 times (``since``, ``until``) and integers (``since``,
``limit``) of the query string, ISO-8601 durations (retention windows, token lifetimes)
and the phone numbers of ``exclude_numbers`` and ``?number=``.

Input: a byte that picks the parser (and, for durations, the start they are added to),
then the text. Contract: only ``BadRequest`` (``bad_query``) escapes the query parsers and
only ``ValueError`` (which pydantic turns into a 400) the duration and number parsers;
a cursor decodes to an aware time and an id, and encodes back to itself; a time is aware;
an integer is within its range; a duration is non-negative, at most 100 years, and added to
a start lands no earlier than ``shortest()`` says (the retention sweep relies on it);
a number is ``+`` and 6 to 15 digits, and normalising it again changes nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

from aiohttp import web
from multidict import MultiDict

from gateway.api.common import query_int, query_time
from gateway.api.recordings import _decode_cursor, _encode_cursor
from gateway.errors import BadRequest
from storage.catalog import Recording
from storage.instructions import normalize_number, parse_duration
from tests.fuzz.harness import Reader, check_error, text_of

STARTS = (
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2024, 2, 29, 12, tzinfo=UTC),
    datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 12, 31, tzinfo=UTC),
    datetime(9899, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(9999, 12, 31, tzinfo=UTC),
)
_NUMBER = re.compile(r"\+[0-9]{6,15}")
_HUNDRED_YEARS = timedelta(days=100 * 366)


def query(name: str, text: str) -> web.Request:
    """A request whose query string holds ``name=text`` (all the parsers read of it)."""
    return cast(web.Request, SimpleNamespace(query=MultiDict({name: text})))


def refused_query(error: BadRequest) -> None:
    check_error(error)
    assert error.code == "bad_query"


def check_cursor(text: str) -> None:
    try:
        created_at, recording_id = _decode_cursor(text)
    except BadRequest as e:
        refused_query(e)
        return
    assert created_at.tzinfo is not None and isinstance(recording_id, str)
    recording = Recording(
        id=recording_id,
        tenant_id="acme",
        call_id="c-1",
        status="recording",
        instructions_version=1,
        created_at=created_at,
        ended_at=None,
        audio_purged=False,
        failure_reason=None,
        deleted_at=None,
        delete_reason=None,
    )
    again = _decode_cursor(_encode_cursor(recording))
    assert again == (created_at, recording_id), "a cursor does not encode back to itself"


def check_time(text: str) -> None:
    try:
        value = query_time(query("since", text), "since")
    except BadRequest as e:
        refused_query(e)
        return
    assert value is not None and value.utcoffset() is not None


def check_int(text: str) -> None:
    try:
        value = query_int(query("since", text), "since", default=0, low=0, high=2**62)
    except BadRequest as e:
        refused_query(e)
        return
    assert 0 <= value <= 2**62


def check_duration(text: str, start: datetime) -> None:
    try:
        duration = parse_duration(text)
    except ValueError as e:
        assert str(e), "a refusal without a sentence"
        return
    assert min(duration.years, duration.months, duration.days, duration.seconds) >= 0
    shortest = duration.shortest()
    assert timedelta(0) <= shortest <= _HUNDRED_YEARS, f"{text!r} is {shortest} long"
    try:
        end = duration.after(start)
    except ValueError:
        return  # past year 9999
    assert end - start >= shortest, f"{text!r} after {start} is shorter than {shortest}"


def check_number(text: str) -> None:
    try:
        number = normalize_number(text)
    except ValueError:
        return
    assert _NUMBER.fullmatch(number), f"{number!r} is not a normalised number"
    assert normalize_number(number) == number


def fuzz_one(data: bytes) -> None:
    reader = Reader(data)
    which = reader.u8()
    text = text_of(reader.rest())
    kind = which % 5
    if kind == 0:
        check_cursor(text)
    elif kind == 1:
        check_time(text)
    elif kind == 2:
        check_int(text)
    elif kind == 3:
        check_duration(text, STARTS[which // 5 % len(STARTS)])
    else:
        check_number(text)
