"""The route table of the control API: each route's method, path, handler, roles, bodies and
error codes, written once.

Everything else is derived from it: ``add_routes`` mounts it, ``guard`` checks the caller
and reads the body before the handler runs, and ``gateway.openapi`` documents it. The checks
run in the order the API promises (DESIGN.md, ``gateway.auth``):

1. the token (401);
2. the tenant: a tenant token naming another tenant is 404, whatever its role;
3. ``find``, where a route has one: the path's resource is looked up in the caller's tenant
   (404) *before* the role is checked, so a token learns nothing about other tenants' ids,
   not even from a 403;
4. the role (403);
5. the body, validated by its model (400 naming the field; 422 for instructions).

A route with no roles (``PUBLIC``) is served to anyone, with none of these checks.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from gateway.api import (
    audit,
    calls,
    export,
    models,
    recordings,
    rights,
    rightsmodels,
    tenants,
)
from gateway.api.common import BODY, FOUND, TENANT, json_body, principal_of
from gateway.auth import Principal, require_role, scope, tenant_of
from gateway.calls import CALL_ID_PATTERN, CallAnnouncement, parse_announcement
from gateway.errors import invalid_body
from gateway.policy import RefusalCode
from gateway.state import SERVICES
from storage.catalog import Catalog, Role
from storage.instructions import parse_instructions
from storage.validation import first_problem

Finder = Callable[[Catalog, str, Mapping[str, str]], Awaitable[object]]
"""Looks the path's resource up in the caller's tenant; raises ``NotFound``."""


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: the model that documents and validates it, and the error code of a
    body that fails it (``bad_request``, ``bad_role``, ...)."""

    model: type[BaseModel]
    code: str = "bad_request"
    field_codes: Mapping[str, str] = field(default_factory=dict)
    """The code of a body whose first offending field is one of these (the token's
    ``role``: ``bad_role``), instead of ``code``."""
    parse: Callable[[object], BaseModel] | None = None
    """Validation beyond the model (the announcement's codec rules; the instructions'
    own 422), used instead of ``model``; it raises the API's errors itself."""

    async def read(self, request: web.Request) -> BaseModel:
        raw = await json_body(request)
        if self.parse is not None:
            return self.parse(raw)
        try:
            return self.model.model_validate(raw)
        except ValidationError as e:
            top = first_problem(e)[0].split(".")[0]
            raise invalid_body(e, self.field_codes.get(top, self.code)) from None


@dataclass(frozen=True, slots=True)
class Query:
    """A query parameter (handlers read and check it; this documents it)."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: frozenset[Role]
    operation_id: str
    summary: str
    tag: str
    answer: type[BaseModel] | str
    """The model of a 2xx JSON answer, or the media type of a binary one."""
    status: int = 200
    body: Body | None = None
    find: Finder | None = None
    query: tuple[Query, ...] = ()
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    """The error codes this route answers besides those every route of its kind can
    (401, 503, 403 and, with a path parameter, 404; with a body, 400 ``bad_json`` and the
    body's code, and 413 for a body over aiohttp's ``client_max_size``)."""
    description: str | None = None
    """For the document, when the handler's docstring is not the right words."""
    ranges: bool = False
    """The binary answer takes a ``Range: bytes=first-last`` header (206, or 416)."""

    def error_codes(self) -> dict[int, tuple[str, ...]]:
        """Every status this route can answer with an error, and the codes of each."""
        codes: dict[int, list[str]] = {}
        if self.roles:  # a public route checks no token
            codes = {401: ["unauthorized"], 403: ["forbidden"]}
        codes[503] = ["catalog_unavailable", "storage_unavailable"]
        if "{" in self.path:
            codes[404] = ["not_found"]
        if self.body is not None:
            if self.body.code == "invalid_instructions":  # a document, refused with 422
                codes[400] = ["bad_json"]
                codes[422] = ["invalid_instructions"]
            else:
                codes[400] = ["bad_json", self.body.code, *self.body.field_codes.values()]
            codes[413] = ["request_entity_too_large"]
        for status, extra in self.errors.items():
            codes.setdefault(status, [])
            codes[status] += [c for c in extra if c not in codes[status]]
        return {status: tuple(codes[status]) for status in sorted(codes)}


def _caller_tenant(route: Route, request: web.Request, principal: Principal) -> str | None:
    if "{tenant}" in route.path:
        # 404 for another tenant's path before anything else; the role comes after find.
        return scope(principal, request.match_info["tenant"])
    if "{" not in route.path or route.roles == OPERATOR:
        # /v1/tenants itself names no resource, and /v1/operator/... the operator's own:
        # no tenant to act in (a tenant token gets the role's 403, before any lookup).
        return None
    # /v1/calls/{id}, /v1/recordings/{id}: the token's tenant (the operator gets 403 here;
    # it names tenants in paths).
    return tenant_of(principal)


def guard(route: Route) -> Handler:
    """The handler of ``route`` behind the checks of this module's docstring."""

    if not route.roles:
        return route.handler  # public: no token, no tenant, no body

    async def checked(request: web.Request) -> web.StreamResponse:
        principal = await principal_of(request)
        tenant = _caller_tenant(route, request, principal)
        if tenant is not None:
            request[TENANT] = tenant
            if route.find is not None:
                catalog = request.app[SERVICES].catalog
                request[FOUND] = await route.find(catalog, tenant, request.match_info)
        require_role(principal, route.roles)
        if route.body is not None:
            request[BODY] = await route.body.read(request)
        return await route.handler(request)

    return checked


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        if route.method == "GET":
            # A JSON answer takes HEAD too, as aiohttp's GET routes do; a binary one (the WAV,
            # the ZIP) does not (405): its read would be audited with nothing sent.
            binary = isinstance(route.answer, str)
            app.router.add_get(route.path, guard(route), allow_head=not binary)
        else:
            app.router.add_route(route.method, route.path, guard(route))


PATH_PARAMETERS: dict[str, tuple[dict[str, Any], str]] = {
    "tenant": (
        {"type": "string"},
        "The tenant's id. A tenant token naming another tenant gets 404.",
    ),
    "token_id": ({"type": "string"}, "The token's id (`tok_...`)."),
    "hold_id": ({"type": "string"}, "The legal hold's id (`hold_...`) in the tenant."),
    "call_id": ({"type": "string", "pattern": CALL_ID_PATTERN}, "The call's id."),
    "recording_id": (
        {"type": "string"},
        "The recording's id (`rec_...`), looked up in the token's tenant.",
    ),
}
"""The path parameters any route uses: their schema and words."""


def _roles(*roles: Role) -> frozenset[Role]:
    return frozenset(roles)


OPERATOR, OPERATOR_ADMIN, ADMIN = _roles("operator"), _roles("operator", "admin"), _roles("admin")
PUBLIC = _roles()
"""No token: the route serves what is public (the audit checkpoints' public key)."""
ADMIN_PROCESSOR, PBX = _roles("admin", "processor"), _roles("pbx")
_TENANT = "/v1/tenants/{tenant}"
_RECORDING = "/v1/recordings/{recording_id}"
_LIVE = " Only a live call; a call that ended or was refused answers 409."

_RECORDING_QUERY = (
    Query(
        "number",
        {"type": "string"},
        "Only recordings where this number (international format) is a party.",
    ),
    Query(
        "since",
        {"type": "string", "format": "date-time"},
        "Only recordings that started at or after this time (with a zone).",
    ),
    Query(
        "until",
        {"type": "string", "format": "date-time"},
        "Only recordings that started before this time (with a zone).",
    ),
    Query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "Page size."),
    Query("cursor", {"type": "string"}, "The `next_cursor` of the previous page, as given."),
)
_AUDIT_QUERY = (
    Query(
        "since",
        {"type": "integer", "minimum": 0, "default": 0},
        "Events after this sequence number (0: from the first).",
    ),
    Query(
        "limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size."
    ),
)
_RESULT_ERRORS = {
    404: ("not_instructed",),
    409: ("analysis_pending", "analysis_failed"),
}

ROUTES: tuple[Route, ...] = (
    # --- tenants and tokens
    Route("POST", "/v1/tenants", tenants.create_tenant, OPERATOR, "createTenant",
          "Create a tenant", "tenants", models.Tenant, status=201,
          body=Body(models.TenantCreate), errors={409: ("conflict",)}),
    Route("GET", "/v1/tenants", tenants.list_tenants, OPERATOR, "listTenants",
          "List tenants", "tenants", models.TenantList),
    Route("GET", _TENANT, tenants.get_tenant, OPERATOR_ADMIN, "getTenant",
          "Get a tenant", "tenants", models.Tenant),
    Route("PATCH", _TENANT, tenants.update_tenant, OPERATOR, "updateTenant",
          "Rename a tenant or change its limits", "tenants", models.Tenant,
          body=Body(models.TenantUpdate)),
    Route("DELETE", _TENANT, tenants.delete_tenant, OPERATOR, "deleteTenant",
          "Erase a tenant", "tenants", models.TenantErasure, errors={409: ("legal_hold",)}),
    Route("POST", f"{_TENANT}/tokens", tenants.create_token, OPERATOR_ADMIN, "createToken",
          "Mint a token", "tokens", models.MintedToken, status=201,
          body=Body(models.TokenCreate, field_codes={"role": "bad_role"}),
          errors={403: ("break_glass_required",)}),
    Route("GET", f"{_TENANT}/tokens", tenants.list_tokens, OPERATOR_ADMIN, "listTokens",
          "List tokens", "tokens", models.TokenList),
    Route("DELETE", f"{_TENANT}/tokens/{{token_id}}", tenants.revoke_token, OPERATOR_ADMIN,
          "revokeToken", "Revoke a token", "tokens", models.Token, find=tenants.find_token),
    Route("GET", "/v1/operator/tokens", tenants.list_operator_tokens, OPERATOR,
          "listOperatorTokens", "List operator tokens", "tokens", models.TokenList),
    Route("POST", "/v1/operator/tokens", tenants.create_operator_token, OPERATOR,
          "createOperatorToken", "Mint an operator token", "tokens", models.MintedToken,
          status=201, body=Body(models.OperatorTokenCreate)),
    Route("DELETE", "/v1/operator/tokens/{token_id}", tenants.revoke_operator_token, OPERATOR,
          "revokeOperatorToken", "Revoke an operator token", "tokens", models.Token),
    # --- instructions
    Route("GET", f"{_TENANT}/instructions", tenants.get_instructions, OPERATOR_ADMIN,
          "getInstructions", "Current instructions", "instructions", models.Instructions),
    Route("PUT", f"{_TENANT}/instructions", tenants.put_instructions, ADMIN,
          "putInstructions", "Store new instructions", "instructions", models.Instructions,
          body=Body(models.InstructionsDocument, code="invalid_instructions",
                    parse=parse_instructions)),
    Route("GET", f"{_TENANT}/instructions/history", tenants.instructions_history,
          OPERATOR_ADMIN, "listInstructionsHistory", "Every instructions version",
          "instructions", models.InstructionsHistory),
    # --- calls
    Route("POST", f"{_TENANT}/calls", calls.announce, PBX, "announceCall", "Announce a call",
          "calls", models.Announced, status=201,
          body=Body(CallAnnouncement, code="invalid_call", parse=parse_announcement),
          errors={
              400: ("unsupported_codec",),
              403: typing.get_args(RefusalCode),
              409: ("conflict",),
              429: ("limit_exceeded",),
              503: ("rtp_ports_exhausted", "rtp_unavailable", "spool_full"),
          }),
    Route("GET", f"{_TENANT}/calls/{{call_id}}", calls.get_call, _roles("pbx", "admin"),
          "getCall", "Get a call record", "calls", models.Call, find=calls.find_call),
    Route("POST", "/v1/calls/{call_id}/pause", calls.pause, PBX, "pauseCall",
          "Pause a call's recording", "calls", models.CallPauseState, find=calls.find_call,
          errors={409: ("conflict",)}, description=(calls.pause.__doc__ or "") + _LIVE),
    Route("POST", "/v1/calls/{call_id}/resume", calls.resume, PBX, "resumeCall",
          "Resume a call's recording", "calls", models.CallPauseState, find=calls.find_call,
          errors={409: ("conflict",)}, description=(calls.resume.__doc__ or "") + _LIVE),
    Route("POST", "/v1/calls/{call_id}/end", calls.end, PBX, "endCall", "End a call",
          "calls", models.Call, find=calls.find_call),
    # --- recordings
    Route("GET", f"{_TENANT}/recordings", recordings.list_recordings, ADMIN_PROCESSOR,
          "listRecordings", "List recordings", "recordings", models.RecordingList,
          query=_RECORDING_QUERY, errors={400: ("bad_query",)}),
    Route("GET", _RECORDING, recordings.get_recording, ADMIN_PROCESSOR, "getRecording",
          "Get a recording", "recordings", models.Recording, find=recordings.find_recording),
    Route("DELETE", _RECORDING, rights.erase_recording, ADMIN, "eraseRecording",
          "Erase a recording", "rights", rightsmodels.ErasureReceipt,
          find=recordings.find_recording,
          errors={409: ("legal_hold", "recording_in_progress")}),
    Route("GET", f"{_RECORDING}/audio", recordings.get_audio, ADMIN,
          "getRecordingAudio", "Export a recording's audio", "recordings", "audio/wav",
          find=recordings.find_recording,
          errors={
              403: ("ai_only",),
              409: ("conflict", "audio_not_redacted"),
              410: ("recording_deleted", "audio_purged", "audio_deleted"),
              413: ("too_large",),
              416: ("range_not_satisfiable",),
          }, ranges=True),
    Route("GET", f"{_RECORDING}/transcript", recordings.get_transcript, ADMIN_PROCESSOR,
          "getTranscript", "Get a recording's transcript", "recordings", models.Transcript,
          find=recordings.find_recording,
          errors={**_RESULT_ERRORS, 410: ("recording_deleted", "transcript_deleted")}),
    Route("GET", f"{_RECORDING}/transcript/original", recordings.get_original_transcript,
          ADMIN, "getOriginalTranscript", "Get a recording's unredacted transcript",
          "recordings", models.Transcript, find=recordings.find_recording,
          errors={404: ("not_instructed", "original_not_kept"),
                  409: ("analysis_pending", "analysis_failed"),
                  410: ("recording_deleted", "transcript_deleted")}),
    Route("GET", f"{_RECORDING}/analysis", recordings.get_analysis, ADMIN_PROCESSOR,
          "getAnalysis", "Get a recording's analysis", "recordings", models.Analysis,
          find=recordings.find_recording,
          errors={**_RESULT_ERRORS, 410: ("recording_deleted", "analysis_deleted")}),
    # --- legal holds and data subjects' rights
    Route("POST", f"{_TENANT}/legal-holds", rights.place_hold, ADMIN, "placeLegalHold",
          "Place a legal hold", "holds", rightsmodels.LegalHold, status=201,
          body=Body(rightsmodels.LegalHoldCreate)),
    Route("GET", f"{_TENANT}/legal-holds", rights.list_holds, ADMIN, "listLegalHolds",
          "List legal holds", "holds", rightsmodels.LegalHoldList,
          query=(Query("active", {"type": "boolean", "default": False},
                       "`true` (or `1`): only the holds not released."),)),
    Route("GET", f"{_TENANT}/legal-holds/{{hold_id}}", rights.get_hold, ADMIN,
          "getLegalHold", "Get a legal hold", "holds", rightsmodels.LegalHold,
          find=rights.find_hold),
    Route("DELETE", f"{_TENANT}/legal-holds/{{hold_id}}", rights.release_hold, ADMIN,
          "releaseLegalHold", "Release a legal hold", "holds", rightsmodels.LegalHold,
          find=rights.find_hold, errors={409: ("hold_released",)}),
    Route("POST", f"{_TENANT}/erasure-requests", rights.request_erasure, ADMIN,
          "requestErasure", "Erase a data subject's recordings", "rights",
          rightsmodels.ErasureReceipt, body=Body(rightsmodels.ErasureRequest),
          errors={409: ("legal_hold", "recording_in_progress")}),
    Route("GET", f"{_TENANT}/export", export.export_number, ADMIN, "exportNumber",
          "Export a data subject's calls", "rights", "application/zip",
          query=(Query("number", {"type": "string"},
                       "The data subject's number, international format.", required=True),),
          errors={400: ("bad_query",)},
          description="A ZIP (portability, GDPR Art. 20) of every call where the number is a "
          "party: `calls.json` first, then per recording a folder `recordings/{recording_id}/` "
          "with `recording.json`, `transcript.json`, `analysis.json` and `audio.wav` where they "
          "exist, and last `manifest.json` (`x-zip-entries`). It is produced recording by "
          "recording while it is sent, so its memory does not grow with the number of calls, "
          "and nothing decrypted is written anywhere else. Every read is audited: "
          "`export.created` and the first recording's reads before the first byte is sent, "
          "the reads of each later page of recordings (`transcript.read`, `analysis.read`, "
          "`audio.read`) before that page's first byte. If a sealed object fails to verify "
          "or the store fails mid-stream the connection is closed early: the ZIP has no "
          "central directory and nothing unverified was sent."),
    # --- audit
    Route("GET", f"{_TENANT}/audit", audit.list_audit, ADMIN, "listAudit",
          "Read the audit log", "audit", models.AuditPage, query=_AUDIT_QUERY,
          errors={400: ("bad_query",)}),
    Route("GET", f"{_TENANT}/audit/verify", audit.verify_audit, ADMIN, "verifyAudit",
          "Check the audit log's chain", "audit", models.AuditCheck),
    Route("GET", f"{_TENANT}/audit/checkpoints", audit.list_checkpoints, ADMIN,
          "listAuditCheckpoints", "List the audit log's signed checkpoints", "audit",
          models.AuditCheckpointList, query=_AUDIT_QUERY, errors={400: ("bad_query",)}),
    Route("POST", f"{_TENANT}/audit/checkpoints", audit.make_checkpoint, ADMIN,
          "makeAuditCheckpoint", "Sign the audit log's head now", "audit",
          models.AuditCheckpoint, errors={409: ("audit_broken", "conflict")}),
    Route("GET", "/v1/audit/public-key", audit.public_key, PUBLIC, "getAuditPublicKey",
          "The checkpoints' public key", "audit", models.AuditPublicKey),
)  # fmt: skip
