"""The HTTP control API of ../shared/API.md: tenants, tokens, instructions, calls,
recordings, legal holds, data subjects' rights and the audit log. Each module holds the
handlers of one resource; ``add_routes`` mounts them."""

from __future__ import annotations

from aiohttp import web

from gateway.api import audit, calls, recordings, rights, tenants


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/tenants", tenants.create_tenant)
    router.add_get("/v1/tenants", tenants.list_tenants)
    router.add_get("/v1/tenants/{tenant}", tenants.get_tenant)
    router.add_delete("/v1/tenants/{tenant}", tenants.delete_tenant)
    router.add_post("/v1/tenants/{tenant}/tokens", tenants.create_token)
    router.add_get("/v1/tenants/{tenant}/tokens", tenants.list_tokens)
    router.add_delete("/v1/tenants/{tenant}/tokens/{token_id}", tenants.revoke_token)
    router.add_get("/v1/tenants/{tenant}/instructions", tenants.get_instructions)
    router.add_put("/v1/tenants/{tenant}/instructions", tenants.put_instructions)
    router.add_get("/v1/tenants/{tenant}/instructions/history", tenants.instructions_history)
    router.add_post("/v1/tenants/{tenant}/calls", calls.announce)
    router.add_get("/v1/tenants/{tenant}/calls/{call_id}", calls.get_call)
    router.add_post("/v1/calls/{call_id}/pause", calls.pause)
    router.add_post("/v1/calls/{call_id}/resume", calls.resume)
    router.add_post("/v1/calls/{call_id}/end", calls.end)
    router.add_get("/v1/tenants/{tenant}/recordings", recordings.list_recordings)
    router.add_get("/v1/recordings/{recording_id}", recordings.get_recording)
    router.add_get("/v1/recordings/{recording_id}/audio", recordings.get_audio)
    router.add_get("/v1/recordings/{recording_id}/transcript", recordings.get_transcript)
    router.add_get("/v1/recordings/{recording_id}/analysis", recordings.get_analysis)
    router.add_delete("/v1/recordings/{recording_id}", rights.erase_recording)
    router.add_post("/v1/tenants/{tenant}/legal-holds", rights.place_hold)
    router.add_get("/v1/tenants/{tenant}/legal-holds", rights.list_holds)
    router.add_get("/v1/tenants/{tenant}/legal-holds/{hold_id}", rights.get_hold)
    router.add_delete("/v1/tenants/{tenant}/legal-holds/{hold_id}", rights.release_hold)
    router.add_post("/v1/tenants/{tenant}/erasure-requests", rights.request_erasure)
    router.add_get("/v1/tenants/{tenant}/export", rights.export_number)
    router.add_get("/v1/tenants/{tenant}/audit", audit.list_audit)
    router.add_get("/v1/tenants/{tenant}/audit/verify", audit.verify_audit)
