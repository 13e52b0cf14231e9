"""The HTTP control API of ../shared/API.md: tenants, tokens, instructions, calls,
recordings, legal holds, data subjects' rights and the audit log. Each module holds the
handlers of one resource; ``routes`` declares every route once, and ``add_routes`` mounts
them behind the checks it derives from that table."""

from __future__ import annotations

from gateway.api.routes import ROUTES, add_routes

__all__ = ["DESCRIPTION", "ROUTES", "add_routes"]

DESCRIPTION = """callvault records and analyses PBX call audio on each tenant's **documented
instructions** (GDPR Art. 28): a tenant admin PUTs an instructions document (recording, each
AI feature, the consent rule, retention windows, numbers never to record), every version is
kept, and every call is checked against the current version before a byte of its audio is
stored. Everything is off by default, so a tenant that never stored instructions has every
call refused; a refused call leaves only its call record. Audio, transcripts and analysis are
**encrypted at rest**: each object is sealed in segments with AES-256-GCM under its own data
key, which is wrapped by the tenant's key (KEK); deleting a tenant destroys its KEKs, so
nothing of it can be opened again. Retention windows delete data as the instructions say,
unless a **legal hold** covers it; data subjects' erasure and export requests are served per
number.

Authenticate with `Authorization: Bearer <token>`; each token has one role (`x-roles` on
every operation) and, except `operator`, one tenant. A resource of another tenant is always
404, never 403. Errors are `{"error": <code>, "message": <sentence>}` (`field` too on 422,
`hold` too on 409 `legal_hold`).
Audio arrives over the WebSocket ingest routes below, or over Asterisk AudioSocket TCP,
described in the top-level `x-audiosocket` extension."""
"""The API in a page: the OpenAPI document's ``info.description``."""
