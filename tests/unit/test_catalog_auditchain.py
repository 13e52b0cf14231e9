"""The audit chain's definition (keyed, and the legacy formula) and the checkpoint message,
pinned by known answers."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.catalog.auditchain import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    checkpoint_message,
    encode_detail,
    event_hash,
    format_at,
    legacy_event_hash,
    normalize_detail,
)

AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


KEY = bytes(range(32))
FIRST_BODY = (
    '{"action":"recording.read","actor":"tok_1","at":"2026-11-27T10:00:00.000000Z",'
    '"detail":{"bytes":42,"é":"ü"},"object":"rec_1","seq":1}'
).encode()


def test_known_answer() -> None:
    # Written out by hand: sorted keys, no spaces, UTF-8 (not \u escapes), microseconds + Z.
    # The digests were checked with `openssl dgst -sha256 -mac HMAC -macopt hexkey:0001…1f`
    # over 32 zero bytes followed by the body: an auditor's tool in any language agrees.
    first = "0a7d58e6f9b3ffaabc3e090960864dfb5feee7883838b22aa4c7beb8d584c5cb"
    assert hmac.new(KEY, bytes(32) + FIRST_BODY, hashlib.sha256).hexdigest() == first
    assert (
        event_hash(
            KEY,
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
    assert (
        event_hash(
            KEY,
            first,
            seq=2,
            at=AT + timedelta(seconds=1.5),
            actor="a",
            action="x",
            object=None,
            detail={},
        )
        == "23d34f20401de6b1161258dfc97383a59556024536f3aba6f7cdc3e6e1c0c3d5"
    )


def test_the_legacy_formula_is_plain_sha256_of_the_same_body() -> None:
    # Kept for verifying and re-keying chains written before audit keys existed.
    legacy = legacy_event_hash(
        GENESIS_HASH,
        seq=1,
        at=AT,
        actor="tok_1",
        action="recording.read",
        object="rec_1",
        detail={"é": "ü", "bytes": 42},
    )
    assert legacy == hashlib.sha256(bytes(32) + FIRST_BODY).hexdigest()
    assert legacy == "283d5cb868d540aa01d76ef9b0f523a8e5be76528aae01861ab374faad27e957"


def test_every_field_and_the_key_are_covered() -> None:
    base: dict[str, Any] = {
        "seq": 1,
        "at": AT,
        "actor": "a",
        "action": "x",
        "object": "o",
        "detail": {"k": 1},
    }
    reference = event_hash(KEY, GENESIS_HASH, **base)
    variants: list[dict[str, Any]] = [
        {"seq": 2},
        {"at": AT + timedelta(microseconds=1)},
        {"actor": "b"},
        {"action": "y"},
        {"object": None},
        {"detail": {"k": 2}},
    ]
    for change in variants:
        assert event_hash(KEY, GENESIS_HASH, **{**base, **change}) != reference
    assert event_hash(KEY, "11" * 32, **base) != reference
    assert event_hash(bytes(32), GENESIS_HASH, **base) != reference
    assert legacy_event_hash(GENESIS_HASH, **base) != reference
    with pytest.raises(ValueError, match="empty"):
        event_hash(b"", GENESIS_HASH, **base)


def test_the_checkpoint_message_is_written_out() -> None:
    message = checkpoint_message(
        tenant="acme", seq=7, hash="ab" * 32, at=AT, key_id="ed25519-0011223344556677"
    )
    assert message == (
        b"callvault-audit-checkpoint/v1\n"
        b'{"at":"2026-11-27T10:00:00.000000Z","hash":"' + b"ab" * 32 + b'",'
        b'"key_id":"ed25519-0011223344556677","seq":7,"tenant":"acme"}'
    )


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
    expected = hmac.new(KEY, bytes(32) + canonical_json(body), hashlib.sha256).hexdigest()
    assert event_hash(KEY, GENESIS_HASH, **fields, detail=detail) == expected
    normal, encoded = encode_detail(detail)
    assert chain_hash(KEY, GENESIS_HASH, **fields, detail_json=encoded) == expected
    assert normal == detail
