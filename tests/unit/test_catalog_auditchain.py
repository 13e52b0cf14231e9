"""The audit hash chain's definition, pinned by a known answer."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.catalog.auditchain import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    encode_detail,
    event_hash,
    format_at,
    normalize_detail,
)

AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_known_answer() -> None:
    # Written out by hand: sorted keys, no spaces, UTF-8 (not \u escapes), microseconds + Z.
    body = (
        '{"action":"recording.read","actor":"tok_1","at":"2026-11-27T10:00:00.000000Z",'
        '"detail":{"bytes":42,"é":"ü"},"object":"rec_1","seq":1}'
    ).encode()
    first = hashlib.sha256(bytes(32) + body).hexdigest()
    assert (
        event_hash(
            GENESIS_HASH,
            seq=1,
            at=AT,
            actor="tok_1",
            action="recording.read",
            object="rec_1",
            detail={"é": "ü", "bytes": 42},
        )
        == first
    )
    second_body = (
        b'{"action":"x","actor":"a","at":"2026-11-27T10:00:01.500000Z",'
        b'"detail":{},"object":null,"seq":2}'
    )
    assert (
        event_hash(
            first,
            seq=2,
            at=AT + timedelta(seconds=1.5),
            actor="a",
            action="x",
            object=None,
            detail={},
        )
        == hashlib.sha256(bytes.fromhex(first) + second_body).hexdigest()
    )


def test_every_field_is_covered() -> None:
    base: dict[str, Any] = {
        "seq": 1,
        "at": AT,
        "actor": "a",
        "action": "x",
        "object": "o",
        "detail": {"k": 1},
    }
    reference = event_hash(GENESIS_HASH, **base)
    variants: list[dict[str, Any]] = [
        {"seq": 2},
        {"at": AT + timedelta(microseconds=1)},
        {"actor": "b"},
        {"action": "y"},
        {"object": None},
        {"detail": {"k": 2}},
    ]
    for change in variants:
        assert event_hash(GENESIS_HASH, **{**base, **change}) != reference
    assert event_hash("11" * 32, **base) != reference


def test_times_are_written_in_utc_and_must_be_aware() -> None:
    assert format_at(datetime(2026, 11, 27, 12, 0, tzinfo=timezone(timedelta(hours=2)))) == (
        "2026-11-27T10:00:00.000000Z"
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        format_at(datetime(2026, 11, 27, 12, 0))


def test_details_are_normalized_and_kept_small() -> None:
    assert canonical_json({"b": [1, 2.5], "a": None}) == b'{"a":null,"b":[1,2.5]}'
    assert normalize_detail({"t": (1, 2)}) == {"t": [1, 2]}
    with pytest.raises(ValueError, match="never content"):
        normalize_detail({"transcript": "word " * 1000})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


json_scalars = st.none() | st.booleans() | st.integers() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(min_value=1, max_value=2**53),
    actor=st.text(),
    action=st.text(),
    object=st.none() | st.text(),
    detail=st.dictionaries(st.text(), json_values, max_size=4),
)
def test_chain_hash_is_event_hash_of_the_whole_body(
    seq: int, actor: str, action: str, object: str | None, detail: dict[str, Any]
) -> None:
    # The fast path writes the body key by key; it must be the canonical JSON of the body.
    fields: dict[str, Any] = {
        "seq": seq,
        "at": AT,
        "actor": actor,
        "action": action,
        "object": object,
    }
    body = {**fields, "at": "2026-11-27T10:00:00.000000Z", "detail": detail}
    expected = hashlib.sha256(bytes(32) + canonical_json(body)).hexdigest()
    assert event_hash(GENESIS_HASH, **fields, detail=detail) == expected
    normal, encoded = encode_detail(detail)
    assert chain_hash(GENESIS_HASH, **fields, detail_json=encoded) == expected
    assert normal == detail
