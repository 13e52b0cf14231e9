"""The OpenAPI 3.1 document of callvault's external contract (../shared/API.md).

PBX vendors, tenant admins and processors program against this document, so it is derived
from what the server runs: the paths, roles, bodies and error codes from the route table
(``gateway.api.routes``), the component schemas from the pydantic models
(``model_json_schema``, attribute docstrings as descriptions), the descriptions from the
handlers' docstrings. Only what introspection cannot say is written by hand: the WebSocket
and AudioSocket protocols and their close codes (``gateway.ingest.docs``), the health
endpoints (here), and the JSON Schema twins of the checks the instruction validators make in
code (beside them, in ``storage.instructions``). ``tests/unit/test_openapi.py`` fails until
the checked-in copy is regenerated, and checks that every route the app registers is
documented and vice versa.

The checked-in ``gateway/openapi.json`` is what ``GET /v1/openapi.json`` serves; it is
written by ``python -m gateway.openapi > gateway/openapi.json``. Serving a file rather than
building the document per request keeps the served contract reviewable in diffs.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from gateway.api import DESCRIPTION, models, rightsmodels
from gateway.api.calls import WEBSOCKET_PATHS
from gateway.api.codes import ERROR_CODES, EXTRA_FIELDS, WIRE_CODE
from gateway.api.export import EXPORT_ENTRIES
from gateway.api.routes import PATH_PARAMETERS, ROUTES, Route
from gateway.auth import ROLE_WORDS
from gateway.ingest.docs import CLOSE_CODES, FORK, TWILIO, WS_COMMON, audiosocket_extension
from gateway.ingest.events import MAX_MESSAGE
from gateway.policy import REFUSAL_CODES
from storage.catalog.records import ROLES
from storage.instructions import (
    CATEGORY_NAME,
    CODE_CHECKED,
    DURATION,
    DURATION_PATTERN,
)

__all__ = ["DURATION_PATTERN", "ERROR_CODES", "REFUSAL_CODES", "build_document", "main", "render"]

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"


SHARED_RESPONSES: dict[str, tuple[int, tuple[str, ...]]] = {
    "Unauthorized": (401, ("unauthorized",)),
    "Forbidden": (403, ("forbidden",)),
    "NotFound": (404, ("not_found",)),
    "Unavailable": (503, ("catalog_unavailable", "storage_unavailable")),
}
"""Error responses most routes share, as components; any other set is written inline."""

# --- component schemas --------------------------------------------------------------------


class _Schemas(GenerateJsonSchema):
    """pydantic's generator without the ``title`` it derives from each field's name."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Every model a route or the export names, plus the error body: request bodies as
    they are validated, answers as they are serialised (every field with a default sent)."""
    answers: list[type[BaseModel]] = [models.Error, models.Status, models.Readiness]
    answers += [rightsmodels.ExportManifest]
    answers += [models.Call, models.Recording, models.Transcript, models.Analysis]
    answers += [r.answer for r in ROUTES if isinstance(r.answer, type)]
    found = [(r.body.model, "validation") for r in ROUTES if r.body is not None]
    found += [(model, "serialization") for model in answers]
    return list(dict.fromkeys(typing.cast(list[tuple[type[BaseModel], JsonSchemaMode]], found)))


def component_schemas() -> dict[str, Schema]:
    _, top = models_json_schema(
        _models(),
        ref_template="#/components/schemas/{model}",
        schema_generator=_Schemas,
    )
    schemas: dict[str, Schema] = top["$defs"]
    for schema in schemas.values():
        schema.pop("title", None)
    # The retention windows are strings checked by a parser; say its grammar as a pattern.
    schemas["Duration"] = DURATION
    for (component, name), schema in CODE_CHECKED.items():
        field = schemas[component]["properties"][name]
        kept = {k: field[k] for k in ("default", "description") if k in field}
        schemas[component]["properties"][name] = {**schema, **kept}
    categories = schemas["AiRule"]["properties"]["categories"]
    categories["propertyNames"] = CATEGORY_NAME
    _drop_null_defaults(schemas)
    return dict(sorted(schemas.items()))


def _drop_null_defaults(node: Any) -> None:
    """pydantic writes ``"default": null`` for fields an answer leaves out (``Absent``);
    null is not their type, so the document says nothing instead."""
    if isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)
    elif isinstance(node, dict):
        if node.get("default", 0) is None and not _allows_null(node):
            del node["default"]
        _drop_null_defaults(list(node.values()))


def _allows_null(node: dict[str, Any]) -> bool:
    """Whether a schema node's type, or one of its ``anyOf``/``oneOf`` branches, is null."""
    kinds = node.get("type", [])
    branches = node.get("anyOf", []) + node.get("oneOf", [])
    return "null" in (kinds if isinstance(kinds, list) else [kinds]) or any(
        map(_allows_null, branches)
    )


# --- responses and operations -------------------------------------------------------------


def error_response(status: int, codes: Sequence[str]) -> Schema:
    """An error response of ``status`` that can carry ``codes``: the shared Error schema, the
    codes listed in the description, and one example per code."""
    examples: dict[str, Schema] = {}
    lines = []
    for code in codes:
        when, message = ERROR_CODES[code]
        wire = WIRE_CODE.get(code, code)
        lines.append(f"- `{wire}`: {when}")
        value = {"error": wire, "message": message, **EXTRA_FIELDS.get(code, {})}
        examples[code] = {"summary": when, "value": value}
    return {
        "description": f"{HTTPStatus(status).phrase}:\n\n" + "\n".join(lines),
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/Error"},
                "examples": examples,
            }
        },
    }


def _errors(status: int, codes: tuple[str, ...]) -> Schema:
    for name, shared in SHARED_RESPONSES.items():
        if shared == (status, codes):
            return {"$ref": f"#/components/responses/{name}"}
    return error_response(status, codes)


def _answer(route: Route) -> Schema:
    phrase = HTTPStatus(route.status).phrase + "."
    if isinstance(route.answer, str):
        media: Schema = {"schema": {"type": "string", "contentMediaType": route.answer}}
        if route.answer == "application/zip":
            media["x-zip-entries"] = EXPORT_ENTRIES
        return {"description": phrase, "content": {route.answer: media}}
    schema = {"$ref": f"#/components/schemas/{route.answer.__name__}"}
    return {"description": phrase, "content": {"application/json": {"schema": schema}}}


def _roles_text(roles: Sequence[str]) -> str:
    if not roles:
        return "No token needed."
    return "Roles: " + ", ".join(f"`{r}`" for r in roles) + "."


def _operation(
    operation_id: str, summary: str, tag: str, roles: Sequence[str], description: str
) -> Schema:
    """The parts every operation has; the roles go into the description (for readers) and
    ``x-roles`` (for tools)."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": f"{description}\n\n{_roles_text(roles)}",
        "tags": [tag],
        "x-roles": list(roles),
    }


def route_operation(route: Route) -> Schema:
    roles = [role for role in ROLES if role in route.roles]
    # Docstrings are reST; the document's descriptions are Markdown (CommonMark).
    text = route.description or route.handler.__doc__ or route.summary
    words = inspect.cleandoc(text).replace("``", "`")
    operation = _operation(route.operation_id, route.summary, route.tag, roles, words)
    responses = {str(route.status): _answer(route)}
    if route.ranges:
        partial = {**_answer(route), "description": "Partial Content: the range asked for."}
        partial["headers"] = {
            "Content-Range": {
                "schema": {"type": "string"},
                "description": "`bytes first-last/size`.",
            }
        }
        responses["206"] = partial
    for status, codes in route.error_codes().items():
        responses[str(status)] = _errors(status, codes)
    operation["responses"] = responses
    if not route.roles:
        operation["security"] = []  # public
    parameters = [
        {"name": q.name, "in": "query", "required": q.required, "schema": q.schema,
         "description": q.description}
        for q in route.query
    ]  # fmt: skip
    if route.ranges:
        parameters.append({
            "name": "Range", "in": "header", "required": False,
            "schema": {"type": "string"},
            "description": "One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-512`): "
            "answered 206 with those bytes; 416 when it starts past the end; any other "
            "form is ignored and the whole body is sent (RFC 9110 14.2)."})  # fmt: skip
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schema = {"$ref": f"#/components/schemas/{route.body.model.__name__}"}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def api_paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for route in ROUTES:
        item = paths.setdefault(route.path, {})
        if names := re.findall(r"\{(\w+)\}", route.path):
            item["parameters"] = [{"$ref": f"#/components/parameters/{n}"} for n in names]
        item[route.method.lower()] = route_operation(route)
    return paths


def parameters() -> dict[str, Schema]:
    return {
        name: {"name": name, "in": "path", "required": True, "schema": schema,
               "description": description}
        for name, (schema, description) in PATH_PARAMETERS.items()
    }  # fmt: skip


def _public(operation_id: str, summary: str, description: str, responses: Schema) -> Schema:
    operation = _operation(operation_id, summary, "operations", (), description)
    return {"get": {**operation, "responses": responses, "security": []}}


def _ok(description: str, media: str, schema: Schema) -> Schema:
    return {"description": description, "content": {media: {"schema": schema}}}


def operational_paths() -> dict[str, Schema]:
    status = {"$ref": "#/components/schemas/Status"}
    return {
        "/healthz": _public(
            "getHealthz", "Liveness", "The process is up; no dependency is checked.",
            {"200": _ok("Up.", "application/json", {**status, "examples": [{"status": "ok"}]})},
        ),
        "/readyz": _public(
            "getReadyz", "Readiness",
            "Whether the node can take calls. 200 `ready`; 200 `degraded` while the object "
            "store does not answer or spooled audio waits to be published to it (calls are "
            "still taken: the spool holds them); 503 when the catalog does not answer or "
            "the spool is full (`CALLVAULT_INGEST__SPOOL_MAX_BYTES`), so that a load "
            "balancer sends calls elsewhere.",
            {
                "200": _ok("Ready, or degraded but taking calls.", "application/json",
                           {"$ref": "#/components/schemas/Readiness", "examples": [
                               {"status": "ready"},
                               {"status": "degraded",
                                "store": "not reachable: the object store could not be "
                                         "reached.",
                                "spool_bytes": 1048576, "spool_pending_bytes": 524288},
                           ]}),
                "503": error_response(503, ("not_ready", "spool_full")),
            },
        ),
        "/metrics": _public(
            "getMetrics", "Prometheus metrics",
            "Prometheus text exposition: active calls, frames in, audio discarded while "
            "paused, refusals by code, ingest errors by code, jobs queued, flush failures, "
            "spool bytes (held and waiting for the store), calls refused by a full spool, "
            "and the stores' and catalog's own metrics.",
            {"200": _ok("The metrics.", "text/plain", {"type": "string"})},
        ),
        "/v1/openapi.json": _public(
            "getOpenapi", "This document",
            "The OpenAPI 3.1 document of the API (the checked-in `gateway/openapi.json`).",
            {"200": _ok("The document.", "application/json", {"type": "object"})},
        ),
    }  # fmt: skip


# --- the WebSocket ingest protocols (prose: nothing to introspect) --------------------------


def ingest_paths() -> dict[str, Schema]:
    def websocket(operation_id: str, summary: str, protocol: str) -> Schema:
        operation = _operation(operation_id, summary, "ingest", ("pbx",), protocol + WS_COMMON)
        operation["responses"] = {
            "101": {"description": "Switching Protocols: the WebSocket is open."},
            "400": error_response(400, ("not_websocket",)),
            "401": error_response(401, ("unauthorized",)),
            "403": error_response(403, ("forbidden",)),
        }
        # Any of the three ways authenticates; `{}` says the upgrade itself may carry none
        # (the token then comes in the first message).
        operation["security"] = [{"bearerAuth": []}, {"ingestToken": []}, {}]
        operation["x-websocket"] = {
            "max_message_bytes": MAX_MESSAGE,
            "close_codes": dict(CLOSE_CODES),
        }
        return {"get": operation}

    return {
        WEBSOCKET_PATHS["twilio"]: websocket(
            "ingestTwilio", "Twilio Media Streams ingest (WebSocket)", TWILIO
        ),
        WEBSOCKET_PATHS["fork"]: websocket(
            "ingestFork", "mod_audio_fork / jambonz listen ingest (WebSocket)", FORK
        ),
    }


# --- the document -------------------------------------------------------------------------


def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document as JSON-ready data."""
    bearer = "; ".join(f"`{role}`: {ROLE_WORDS[role]}" for role in ROLES)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "callvault", "version": version("callvault"), "description": DESCRIPTION},
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "ingest", "description": "Audio streams from PBXs."},
            {"name": "tenants", "description": "Tenants (operator)."},
            {"name": "tokens", "description": "API tokens; secrets are shown once."},
            {"name": "instructions", "description": "The tenant's documented instructions."},
            {"name": "calls", "description": "Announcing and controlling calls."},
            {"name": "recordings", "description": "Recordings and their audio."},
            {"name": "holds", "description": "Legal holds: data kept past retention and erasure."},
            {"name": "rights", "description": "Data subjects' rights: erasure and export."},
            {"name": "audit", "description": "The tenant's hash-chained audit log."},
        ],
        "paths": {**operational_paths(), **ingest_paths(), **api_paths()},
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token minted by the API (or the bootstrap operator "
                    f"token). Roles: {bearer}.",
                },
                "ingestToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "WebSocket ingest only: a pbx token in the URL, for PBXs "
                    "that cannot set headers; only over TLS (`wss://`, or a proxy that "
                    "terminates TLS) or from loopback (else close 1008 "
                    "`token_in_url_needs_tls`). The control API refuses it.",
                },
            },
            "schemas": component_schemas(),
            "parameters": parameters(),
            "responses": {
                name: error_response(status, codes)
                for name, (status, codes) in SHARED_RESPONSES.items()
            },
        },
        "x-audiosocket": audiosocket_extension(),
    }


def render(document: Mapping[str, Any] | None = None) -> str:
    """The checked-in text: sorted keys, indent 2, ASCII only, trailing newline. ASCII keeps
    the file byte-identical whatever the locale of the shell that redirects it."""
    data = build_document() if document is None else document
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
