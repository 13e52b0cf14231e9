"""The keyed hash chain of the audit log, and its signed checkpoints, as pure functions.

An auditor's tool (``callvault audit verify``, or a program in any language) recomputes
the chain from an export with the tenant's audit key and without a catalog:

* the *body* of an event is the canonical JSON of ``{action, actor, at, detail, object,
  seq}``: sorted keys, no whitespace, UTF-8 (no ASCII escaping, no NaN), ``at`` ISO-8601
  UTC with microseconds and a ``Z`` (``2026-11-27T10:00:00.000000Z``), ``object`` null when
  absent;
* ``hash = hex(HMAC-SHA256(audit_key, bytes.fromhex(prev_hash) || body))``, where the
  first event's ``prev_hash`` is 64 zeros (``GENESIS_HASH``) and every later one is the
  hash of the event before it.

The key is the tenant's 32-byte audit key from the keyring (``crypto.auditkeys``): without
it nobody can produce a hash that verifies, so a database writer who edits an event cannot
recompute the chain after it. Chains written before the key existed used the same body
with plain ``SHA-256(prev || body)`` (``legacy_event_hash``); they are re-keyed once
(``storage.catalog.audit``).

A *checkpoint* is the gateway's Ed25519 signature (``crypto.signing``) of
``checkpoint_message``: the bytes ``callvault-audit-checkpoint/v1\n`` followed by the
canonical JSON of ``{at, hash, key_id, seq, tenant}`` (the head's sequence number and hash
when it was made, its time as above, and the signing key's id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

GENESIS_HASH = "0" * 64
CHECKPOINT_PREFIX = b"callvault-audit-checkpoint/v1\n"
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
    """``detail`` as it will read back from the database (a JSON round trip) and the
    canonical JSON *of that round-tripped value*, so that the hash computed now is the one
    recomputed at verification even when the round trip changes the value (keys that are
    not strings become strings and sort differently, tuples become lists); big details are
    refused."""
    encoded = canonical_json(detail)
    if len(encoded) > MAX_DETAIL_BYTES:
        raise ValueError(
            f"audit detail is {len(encoded)} bytes, over {MAX_DETAIL_BYTES}: "
            "events carry ids and small metadata, never content"
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded, canonical_json(decoded)


def normalize_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` as it will read back from the database (see ``encode_detail``)."""
    return encode_detail(detail)[0]


def event_hash(
    key: bytes,
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str | None,
    detail: dict[str, Any],
) -> str:
    """The hex HMAC-SHA256 under the tenant's audit ``key`` that links one event to the
    previous one."""
    return chain_hash(
        key,
        prev_hash,
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        object=object,
        detail_json=canonical_json(detail),
    )


def chain_hash(
    key: bytes,
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str | None,
    detail_json: bytes,
) -> str:
    """``event_hash`` with the detail already in canonical JSON (appending thousands of
    receipts is a retention sweep's cost: the detail is encoded once)."""
    body = event_body(
        seq=seq, at=at, actor=actor, action=action, object=object, detail_json=detail_json
    )
    return keyed_hash(key, prev_hash, body)


def keyed_hash(key: bytes, prev_hash: str, body: bytes) -> str:
    """``hex(HMAC-SHA256(key, bytes.fromhex(prev_hash) || body))``."""
    if not key:
        raise ValueError("the audit chain's key is empty")
    return hmac.new(key, bytes.fromhex(prev_hash) + body, hashlib.sha256).hexdigest()


def legacy_event_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str | None,
    detail: dict[str, Any],
) -> str:
    """The chain's first formula, unkeyed (``legacy_hash`` of the event's body). Anyone can
    compute it, a database writer too: only for verifying a chain before it is re-keyed."""
    body = event_body(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        object=object,
        detail_json=canonical_json(detail),
    )
    return legacy_hash(prev_hash, body)


def legacy_hash(prev_hash: str, body: bytes) -> str:
    """``hex(SHA-256(bytes.fromhex(prev_hash) || body))``: the unkeyed twin of
    ``keyed_hash``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


def event_body(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str | None,
    detail_json: bytes,
) -> bytes:
    """The canonical JSON of an event's body, written out key by key in sorted order
    (action, actor, at, detail, object, seq): byte for byte what ``canonical_json`` of the
    whole body gives, without encoding the detail a second time."""
    if type(seq) is not int:
        raise TypeError("seq must be an int")
    return b"".join(
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


def checkpoint_message(*, tenant: str, seq: int, hash: str, at: datetime, key_id: str) -> bytes:
    """The bytes a checkpoint's signature covers (see the module's docstring)."""
    body = {"at": format_at(at), "hash": hash, "key_id": key_id, "seq": seq, "tenant": tenant}
    return CHECKPOINT_PREFIX + canonical_json(body)


def _string(value: str) -> bytes:
    """A JSON string as ``canonical_json`` writes it (UTF-8, no ASCII escaping)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return encode_basestring(value).encode("utf-8")
