"""The hash chain of the audit log, as pure functions.

Each event's hash is ``SHA-256(prev_hash_bytes || canonical_json(body))`` where the body is
``{seq, at, actor, action, object, detail}``, ``at`` is ISO-8601 UTC with microseconds and a
``Z``, and canonical JSON is sorted keys, no whitespace, UTF-8 (no ASCII escaping, no NaN).
The first event of a tenant chains to 64 zeros. Kept apart from the database code so that an
auditor's tool (``callvault audit verify``, or any other language) can recompute it from an
export without a catalog.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

GENESIS_HASH = "0" * 64
MAX_DETAIL_BYTES = 4096
"""Events carry ids and small metadata, never audio or transcript text; this bounds them."""


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` as canonical JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def format_at(at: datetime) -> str:
    """The ISO-8601 form of an event time that goes into the hash, e.g.
    ``2026-11-27T10:00:00.000000Z``; ``at`` must be timezone-aware."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit event times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_detail(detail: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """``detail`` as it will read back from the database (a JSON round trip, so that the
    hash computed now matches the one recomputed at verification) and its canonical JSON;
    big details are refused."""
    encoded = canonical_json(detail)
    if len(encoded) > MAX_DETAIL_BYTES:
        raise ValueError(
            f"audit detail is {len(encoded)} bytes, over {MAX_DETAIL_BYTES}: "
            "events carry ids and small metadata, never content"
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded, encoded


def normalize_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` as it will read back from the database (see ``encode_detail``)."""
    return encode_detail(detail)[0]


def event_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str | None,
    detail: dict[str, Any],
) -> str:
    """The hex SHA-256 that links one event to the previous one."""
    return chain_hash(
        prev_hash,
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        object=object,
        detail_json=canonical_json(detail),
    )


def chain_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str | None,
    detail_json: bytes,
) -> str:
    """``event_hash`` with the detail already in canonical JSON: the body's canonical JSON
    is written out key by key in sorted order (action, actor, at, detail, object, seq),
    byte for byte what ``canonical_json`` of the whole body gives, without encoding the
    detail a second time (appending thousands of receipts is a retention sweep's cost)."""
    if type(seq) is not int:
        raise TypeError("seq must be an int")
    body = b"".join(
        (
            b'{"action":',
            _string(action),
            b',"actor":',
            _string(actor),
            b',"at":',
            _string(format_at(at)),
            b',"detail":',
            detail_json,
            b',"object":',
            b"null" if object is None else _string(object),
            b',"seq":',
            str(seq).encode(),
            b"}",
        )
    )
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


def _string(value: str) -> bytes:
    """A JSON string as ``canonical_json`` writes it (UTF-8, no ASCII escaping)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return encode_basestring(value).encode("utf-8")
