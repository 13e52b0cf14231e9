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


def normalize_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """Return ``detail`` as it will read back from the database (a JSON round trip), so that
    the hash computed now matches the one recomputed at verification; reject big details."""
    encoded = canonical_json(detail)
    if len(encoded) > MAX_DETAIL_BYTES:
        raise ValueError(
            f"audit detail is {len(encoded)} bytes, over {MAX_DETAIL_BYTES}: "
            "events carry ids and small metadata, never content"
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


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
    body = {
        "seq": seq,
        "at": format_at(at),
        "actor": actor,
        "action": action,
        "object": object,
        "detail": detail,
    }
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(body)).hexdigest()
