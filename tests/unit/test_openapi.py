"""The OpenAPI document: checked in and current, complete against the app's routes, valid
OpenAPI 3.1, internally consistent, and in step with what the handlers actually send.

The last point is checked with ``jsonschema`` (``_violations``) applied to the handlers' own
view functions, so a field added to a view without the document (or the other way round)
fails here rather than surprising a client.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel

import gateway.app
from crypto.signing import CheckpointSigner
from gateway import openapi
from gateway.api.audit import public_key_view
from gateway.api.calls import call_view
from gateway.api.recordings import Lifecycle, recording_view
from gateway.api.rights import hold_view
from gateway.api.tenants import instructions_view, tenant_view, token_view
from gateway.app import build_app
from gateway.calls import CallAnnouncement
from gateway.checkpoints import checkpoint_view
from gateway.policy import RefusalCode
from gateway.settings import LimitsSettings, Settings
from storage.catalog.records import (
    ROLES,
    Call,
    Checkpoint,
    Instructions,
    LegalHold,
    Recording,
    Tenant,
    Token,
)
from storage.instructions import (
    AiRule,
    ConsentRule,
    InstructionsDoc,
    RecordingRule,
    RetentionRule,
    default_instructions,
    parse_duration,
    parse_instructions,
)
from storage.retention import Holds, Windows

CHECKED_IN = Path(openapi.__file__).with_name("openapi.json")
REGENERATE = "run `python -m gateway.openapi > gateway/openapi.json` and commit the result"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
REFUSALS = ("recording_not_instructed", "consent_missing", "number_excluded")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.build_document()


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """The target of a local JSON-pointer ``$ref``; KeyError/ValueError when it has none."""
    if not ref.startswith("#/"):
        raise ValueError(f"not a local reference: {ref}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _violations(value: Any, schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """Where ``value`` breaks ``schema`` (JSON Schema 2020-12, the dialect of OpenAPI 3.1),
    as ``<path>: <keyword>`` (``<path>: required <property>`` for a missing property);
    ``$ref``s resolve against ``document``."""
    # The document's components ride along in the root, where its local $refs point.
    root = {**schema, "components": document["components"]}
    validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return sorted(
        "$"
        + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in e.absolute_path)
        + f": {e.validator}"
        + (f" {e.message.split(chr(39))[1]}" if e.validator == "required" else "")
        for e in validator.iter_errors(value)
    )


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return typing.cast(dict[str, Any], document["components"]["schemas"][name])


def _all_properties(document: dict[str, Any], name: str) -> set[str]:
    """Property names of a component, through ``allOf``."""
    schema = _schema(document, name)
    names = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        target = _resolve(document, sub["$ref"]) if "$ref" in sub else sub
        names |= set(target.get("properties", {}))
    return names


# --- (1) checked in and current -----------------------------------------------------------


def test_checked_in_document_is_the_generated_one() -> None:
    generated = openapi.render()
    assert CHECKED_IN.read_text(encoding="utf-8") == generated, (
        f"gateway/openapi.json is out of date: {REGENERATE}"
    )


def test_the_app_serves_the_checked_in_file() -> None:
    assert gateway.app.OPENAPI == CHECKED_IN


def test_main_prints_the_rendered_document(capsys: pytest.CaptureFixture[str]) -> None:
    openapi.main()
    out = capsys.readouterr().out
    assert out == openapi.render()
    assert out.endswith("}\n") and out.isascii()
    assert json.loads(out)["openapi"] == "3.1.0"


# --- (2) routes and document agree, both ways ---------------------------------------------


def test_every_route_is_documented_and_every_documented_operation_is_a_route(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    app = build_app(Settings(data_dir=tmp_path))
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        # The console's pages are HTML for browsers, built on the API (gateway.console).
        and not route.resource.canonical.startswith("/console")
    }
    documented = {(method, path) for method, path, _ in _operations(doc)}
    assert len(routes) >= 20
    assert routes - documented == set(), f"routes missing from the document; {REGENERATE}"
    assert documented - routes == set(), "documented operations the app does not register"


# --- (3) valid OpenAPI 3.1 ----------------------------------------------------------------


def test_document_validates_as_openapi_3_1(doc: dict[str, Any]) -> None:
    try:
        from openapi_spec_validator import OpenAPIV31SpecValidator
    except ImportError:
        pytest.skip(
            "openapi-spec-validator is not installed in the virtualenv (dev extra); the "
            "structural tests in this module still run"
        )
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in OpenAPIV31SpecValidator(doc).iter_errors()
    ]
    assert errors == []


def test_document_header(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    info = doc["info"]
    assert info["title"] == "callvault"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"])
    description = " ".join(info["description"].split())
    assert "**documented instructions**" in description
    assert "**encrypted at rest**" in description
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }


def test_every_operation_is_described_completely(doc: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for method, path, operation in _operations(doc):
        where = f"{method.upper()} {path}"
        assert operation["summary"], where
        roles = operation["x-roles"]
        assert set(roles) <= set(ROLES), where
        if roles:
            assert "Roles: " + ", ".join(f"`{r}`" for r in roles) in operation["description"]
        else:
            assert operation["security"] == [], f"{where}: a public operation needs no token"
        responses = operation["responses"]
        assert any(code.startswith(("1", "2")) for code in responses), where
        # A WebSocket answers a bad token after the upgrade, with close code 1008.
        if operation.get("security") != [] and "x-websocket" not in operation:
            assert "401" in responses, f"{where}: an authenticated operation can answer 401"
        # Every path template variable is declared as a path parameter.
        item = doc["paths"][path]
        declared = {
            (_resolve(doc, p["$ref"]) if "$ref" in p else p)["name"]
            for p in item.get("parameters", []) + operation.get("parameters", [])
        }
        assert set(re.findall(r"\{(\w+)\}", path)) <= declared, where


def test_error_responses_use_the_shared_error_schema_and_their_examples_fit_it(
    doc: dict[str, Any],
) -> None:
    seen = 0
    for method, path, operation in _operations(doc):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            target = _resolve(doc, response["$ref"]) if "$ref" in response else response
            media = target["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (method, path)
            for example in media["examples"].values():
                assert _violations(example["value"], media["schema"], doc) == []
                seen += 1
    assert seen > 30


def test_list_recordings_documents_its_query(doc: dict[str, Any]) -> None:
    operation = doc["paths"]["/v1/tenants/{tenant}/recordings"]["get"]
    query = {
        p["name"]: p["schema"]
        for p in (_resolve(doc, p["$ref"]) if "$ref" in p else p for p in operation["parameters"])
        if p["in"] == "query"
    }
    assert set(query) == {"number", "since", "until", "limit", "cursor"}
    assert query["since"]["format"] == query["until"]["format"] == "date-time"
    assert (query["limit"]["minimum"], query["limit"]["maximum"]) == (1, 200)
    assert query["cursor"]["type"] == "string"


# --- (4) every $ref resolves --------------------------------------------------------------


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert len(refs) > 50
    unresolved = []
    for ref in sorted(set(refs)):
        try:
            _resolve(doc, ref)
        except (KeyError, ValueError, TypeError):
            unresolved.append(ref)
    assert unresolved == []


def test_the_resolver_does_refuse_a_dangling_ref(doc: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        _resolve(doc, "#/components/schemas/NoSuchThing")


def test_every_component_is_used(doc: dict[str, Any]) -> None:
    used = set(_refs(doc))
    for kind in ("schemas", "parameters", "responses"):
        for name in doc["components"][kind]:
            assert f"#/components/{kind}/{name}" in used, f"{kind}/{name} is never referenced"


# --- (5) refusal codes --------------------------------------------------------------------


def test_every_refusal_code_is_documented(doc: dict[str, Any]) -> None:
    assert set(typing.get_args(RefusalCode)) <= set(REFUSALS) | set(openapi.REFUSAL_CODES)
    forbidden = doc["paths"]["/v1/tenants/{tenant}/calls"]["post"]["responses"]["403"]
    codes = {
        e["value"]["error"] for e in forbidden["content"]["application/json"]["examples"].values()
    }
    assert set(REFUSALS) | set(typing.get_args(RefusalCode)) <= codes
    assert set(REFUSALS) <= set(_schema(doc, "RefusalCode")["enum"])
    for path in ("/v1/ingest/twilio", "/v1/ingest/fork"):
        close_1008 = doc["paths"][path]["get"]["x-websocket"]["close_codes"]["1008"]
        assert all(f"`{code}`" in close_1008 for code in REFUSALS)
    # An AudioSocket stream cannot meet a refusal: a refused call gets no AudioSocket id, so
    # a stream for it is `unknown_call` like any id never minted.
    error_frame = doc["x-audiosocket"]["frame_kinds"]["0xff"]
    assert "`unknown_call`" in error_frame


# --- request bodies: every field, defaults, enums -----------------------------------------


def test_instructions_document_has_every_field_and_default(doc: dict[str, Any]) -> None:
    body = _schema(doc, "InstructionsDocument")
    assert set(InstructionsDoc.model_fields) <= set(body["properties"])
    assert body["additionalProperties"] is False
    defaults = default_instructions().document()
    for name in InstructionsDoc.model_fields:
        assert body["properties"][name]["default"] == defaults[name], name
    sections: dict[str, type[BaseModel]] = {
        "RecordingRule": RecordingRule,
        "ConsentRule": ConsentRule,
        "AiRule": AiRule,
        "RetentionRule": RetentionRule,
    }
    for component, model in sections.items():
        schema = _schema(doc, component)
        assert set(schema["properties"]) == set(model.model_fields), component
        for name, field in model.model_fields.items():
            default = field.default
            if isinstance(default, BaseModel):  # a section (ai.redaction): as JSON
                default = default.model_dump(mode="json")
            assert schema["properties"][name]["default"] == default, (component, name)
    retention = _schema(doc, "RetentionRule")["properties"]["recordings"]
    assert retention["allOf"] == [{"$ref": "#/components/schemas/Duration"}]
    assert _schema(doc, "Duration")["pattern"] == openapi.DURATION_PATTERN


def test_a_full_instructions_body_and_the_defaults_fit_the_request_schema(
    doc: dict[str, Any],
) -> None:
    full = {
        "recording": {"enabled": True},
        "consent": {"required": False},
        "ai": {
            "transcript": True,
            "summary": True,
            "sentiment": False,
            "talk_listen": True,
            "topics": False,
            "language": "ro",
        },
        "retention": {
            "recordings": "PT30S",
            "transcripts": "P1Y2M10DT2H30M",
            "call_records": "P3Y",
        },
        "exclude_numbers": ["+40712345678"],
    }
    parse_instructions(full)  # the server accepts it ...
    schema = {"$ref": "#/components/schemas/InstructionsDocument"}
    assert _violations(full, schema, doc) == []  # ... and so does the document
    assert _violations(default_instructions().document(), schema, doc) == []
    bad = {**full, "retention": {"recordings": "P90"}, "colour": "blue"}
    assert len(_violations(bad, schema, doc)) == 2


def test_call_announcement_has_every_field_with_its_enum(doc: dict[str, Any]) -> None:
    schema = _schema(doc, "CallAnnouncement")
    fields = CallAnnouncement.model_fields
    assert set(schema["properties"]) == {f.alias or name for name, f in fields.items()}
    assert set(schema["required"]) == {f.alias or n for n, f in fields.items() if f.is_required()}
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["direction"]["enum"] == ["inbound", "outbound"]
    assert properties["consent"]["enum"] == ["granted", "denied", "not_asked"]
    assert properties["transport"]["enum"] == ["twilio", "fork", "audiosocket", "rtp"]
    codec = properties["codec"]["anyOf"]  # pydantic spells `Literal[...] | None` as anyOf
    assert {v for branch in codec for v in branch.get("enum", [None])} == {
        "pcmu",
        "pcma",
        "opus",
        "l16",
        None,
    }
    body = {
        "from": "+40211234567",
        "to": "+40721234567",
        "direction": "outbound",
        "consent": "granted",
        "transport": "twilio",
        "codec": "pcmu",
        "sample_rate": 8000,
    }
    assert _violations(body, _schema(doc, "CallAnnouncement"), doc) == []
    assert _violations({**body, "consent": "yes"}, _schema(doc, "CallAnnouncement"), doc) != []


# --- responses: the handlers' views fit the schemas ---------------------------------------


def _call(refusal: str | None = None) -> Call:
    return Call(
        tenant_id="acme",
        id="call-1",
        from_number="+40211234567",
        to_number="+40721234567",
        direction="inbound",
        consent="granted",
        transport="twilio",
        codec="pcmu",
        sample_rate=8000,
        instructions_version=None if refusal else 3,
        decision={"store_recording": True, "ai": ["transcript", "sentiment"]},
        refusal_code=refusal,
        started_at=NOW,
        ended_at=None if refusal is None else NOW,
    )


def test_views_fit_their_schemas(doc: dict[str, Any]) -> None:
    tenant = Tenant(
        id="acme",
        name="Acme SRL",
        region="eu",
        created_at=NOW,
        deleted_at=None,
        limits={"live_calls": 5},
    )
    token = Token(
        id="tok_1",
        tenant_id=None,
        role="operator",
        token_hash="0" * 64,
        created_at=NOW,
        created_by="bootstrap",
        revoked_at=None,
    )
    row = Instructions(
        tenant_id="acme",
        version=3,
        document=parse_instructions(
            {"recording": {"enabled": True}, "exclude_numbers": ["+40 712-345-678"]}
        ).document(),
        created_at=NOW,
        created_by="tok_1",
    )
    recording = Recording(
        id="rec_1",
        tenant_id="acme",
        call_id="call-1",
        status="recorded",
        instructions_version=3,
        created_at=NOW,
        ended_at=NOW,
        audio_purged=False,
        failure_reason=None,
        deleted_at=None,
        delete_reason=None,
        samples=16000,
    )
    erased = replace(recording, status="deleted", deleted_at=NOW, delete_reason="erasure")
    ended = replace(_call(), ended_at=NOW)
    held = _hold(number="+40211234567")
    released = replace(_hold(call_ids=("call-1",)), released_at=NOW, released_by="tok_2")
    windows = Windows(
        recordings=parse_duration("P90D"),
        transcripts=parse_duration("P1Y"),
        call_records=parse_duration("P3Y"),
    )
    free, holding = Lifecycle(windows, Holds([])), Lifecycle(windows, Holds([held]))
    checkpoint = Checkpoint(
        tenant_id="acme", seq=7, hash="ab" * 32, at=NOW, key_id="ed25519-0", signature="c2ln"
    )
    cases: list[tuple[str, dict[str, Any]]] = [
        ("Tenant", tenant_view(tenant, LimitsSettings().defaults())),
        ("Token", token_view(token)),
        ("MintedToken", {**token_view(token), "token": "cv_secret"}),
        ("Instructions", instructions_view(None)),
        ("Instructions", instructions_view(row)),
        ("Call", call_view(_call())),
        ("Call", call_view(_call(refusal="consent_missing"))),
        ("Recording", recording_view(recording, ended, ["inbound", "outbound"], free)),
        ("Recording", recording_view(recording, ended, ["inbound"], holding)),
        ("Recording", recording_view(erased, ended, [], free)),
        ("LegalHold", hold_view(held)),
        ("LegalHold", hold_view(released)),
        ("Call", call_view(ended)),
        ("Call", call_view(_call(refusal="consent_missing"))),
        ("AuditCheckpoint", checkpoint_view(checkpoint)),
        ("AuditPublicKey", public_key_view(CheckpointSigner(bytes(32)))),
    ]
    for name, view in cases:
        assert _violations(view, _schema(doc, name), doc) == [], name
        # Every field the handler sends is documented, and every documented one is sent.
        assert set(view) == _all_properties(doc, name), name


def _hold(*, number: str | None = None, call_ids: tuple[str, ...] | None = None) -> LegalHold:
    return LegalHold(
        id="hold_1",
        tenant_id="acme",
        number=number,
        call_ids=call_ids,
        reason="Case 2026/114",
        created_at=NOW,
        created_by="tok_1",
        released_at=None,
        released_by=None,
    )


def test_the_recording_view_documents_expiry_and_holds(doc: dict[str, Any]) -> None:
    """The values the new recording fields take are the ones the schema describes: a held
    call has no ``expires_at`` and names its hold; a deleted one has no window left."""
    windows = Windows(
        recordings=parse_duration("P90D"),
        transcripts=parse_duration("P1Y"),
        call_records=parse_duration("P3Y"),
    )
    recording = Recording(
        id="rec_1",
        tenant_id="acme",
        call_id="call-1",
        status="analyzed",
        instructions_version=3,
        created_at=NOW,
        ended_at=NOW,
        audio_purged=False,
        failure_reason=None,
        deleted_at=None,
        delete_reason=None,
        samples=16000,
    )
    call = replace(_call(), ended_at=NOW)
    held = recording_view(
        recording, call, [], Lifecycle(windows, Holds([_hold(number="+40721234567")]))
    )
    assert (held["expires_at"], held["legal_hold"], held["legal_holds"]) == (None, True, ["hold_1"])
    assert held["expires"] == {
        "recordings": "2027-02-25T10:00:00Z",
        "transcripts": "2027-11-27T10:00:00Z",
        "call_records": "2029-11-27T10:00:00Z",
    }
    free = recording_view(recording, call, [], Lifecycle(windows, Holds([])))
    assert (free["expires_at"], free["legal_hold"]) == ("2027-11-27T10:00:00Z", False)
    gone = recording_view(
        replace(recording, status="deleted", deleted_at=NOW, delete_reason="retention"),
        call,
        [],
        Lifecycle(windows, Holds([])),
    )
    assert gone["expires"]["recordings"] is None and gone["expires_at"] is None
    delete_reason = _schema(doc, "Recording")["properties"]["delete_reason"]["anyOf"]
    assert gone["delete_reason"] in [v for branch in delete_reason for v in branch.get("enum", [])]


def test_a_legal_hold_body_names_call_ids_or_a_number(doc: dict[str, Any]) -> None:
    schema = {"$ref": "#/components/schemas/LegalHoldCreate"}
    assert _violations({"number": "+40712345678", "reason": "Case 1"}, schema, doc) == []
    assert _violations({"call_ids": ["call-1"], "reason": "Case 1"}, schema, doc) == []
    both = {"number": "+40712345678", "call_ids": ["call-1"], "reason": "Case 1"}
    assert _violations(both, schema, doc) == ["$: oneOf"]  # matches both branches
    assert _violations({"reason": "Case 1"}, schema, doc) == ["$: oneOf"]  # matches neither
    assert _violations({"number": "+40712345678"}, schema, doc) == ["$: required reason"]
    assert _violations({"number": "+1", "reason": "x", "why": "y"}, schema, doc) == [
        "$: additionalProperties"
    ]


def test_new_error_codes_are_documented_where_they_are_raised(doc: dict[str, Any]) -> None:
    def codes(path: str, method: str, status: str) -> set[str]:
        response = doc["paths"][path][method]["responses"][status]
        examples = response["content"]["application/json"]["examples"].values()
        return {example["value"]["error"] for example in examples}

    assert codes("/v1/tenants/{tenant}", "delete", "409") == {"legal_hold"}
    assert codes("/v1/recordings/{recording_id}", "delete", "409") == {
        "legal_hold",
        "recording_in_progress",
    }
    assert codes("/v1/tenants/{tenant}/erasure-requests", "post", "409") == {
        "legal_hold",
        "recording_in_progress",
    }
    assert codes("/v1/tenants/{tenant}/legal-holds/{hold_id}", "delete", "409") == {"hold_released"}
    assert "audio_deleted" in codes("/v1/recordings/{recording_id}/audio", "get", "410")
    example = doc["paths"]["/v1/tenants/{tenant}"]["delete"]["responses"]["409"]["content"][
        "application/json"
    ]["examples"]["legal_hold"]["value"]
    assert example["hold"].startswith("hold_")
    assert "hold" in _schema(doc, "Error")["properties"]


def test_rights_operations_are_admin_only_and_the_export_is_a_zip(doc: dict[str, Any]) -> None:
    rights = [
        ("post", "/v1/tenants/{tenant}/legal-holds"),
        ("get", "/v1/tenants/{tenant}/legal-holds"),
        ("get", "/v1/tenants/{tenant}/legal-holds/{hold_id}"),
        ("delete", "/v1/tenants/{tenant}/legal-holds/{hold_id}"),
        ("post", "/v1/tenants/{tenant}/erasure-requests"),
        ("get", "/v1/tenants/{tenant}/export"),
        ("delete", "/v1/recordings/{recording_id}"),
    ]
    assert {(m, p): doc["paths"][p][m]["x-roles"] for m, p in rights} == {
        key: ["admin"] for key in rights
    }
    export = doc["paths"]["/v1/tenants/{tenant}/export"]["get"]
    assert [(p["name"], p["required"]) for p in export["parameters"]] == [("number", True)]
    media = export["responses"]["200"]["content"]["application/zip"]
    assert media["schema"]["contentMediaType"] == "application/zip"
    assert set(media["x-zip-entries"]) == {
        "manifest.json",
        "calls.json",
        *(
            f"recordings/{{recording_id}}/{name}"
            for name in ("recording.json", "transcript.json", "analysis.json", "audio.wav")
        ),
    }


def test_the_schema_checker_catches_a_wrong_view(doc: dict[str, Any]) -> None:
    view = call_view(_call())
    assert _violations({**view, "refusal": "maybe"}, _schema(doc, "Call"), doc) != []
    assert _violations({**view, "sample_rate": "8000"}, _schema(doc, "Call"), doc) != []
    del view["decision"]
    assert _violations(view, _schema(doc, "Call"), doc) == ["$: required decision"]


# --- durations ----------------------------------------------------------------------------


def _parses(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError as e:
        # The 100-year cap is a rule the pattern cannot say; anything else is its business.
        return "longer than 100 years" in str(e)
    return True


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("P90D", True),
        ("PT30S", True),
        ("P3Y", True),
        ("P1Y2M10DT2H30M", True),
        ("PT0.5S", True),
        ("P2W", True),
        ("P", False),
        ("PT", False),
        ("P1DT", False),
        ("p1d", False),
        ("P1.5D", False),
        ("-P1D", False),
        ("P1D ", False),
        ("90D", False),
    ],
)
def test_duration_pattern_examples(text: str, valid: bool) -> None:
    assert (re.search(openapi.DURATION_PATTERN, text) is not None) is valid
    assert _parses(text) is valid


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="PTYMWDHS0123456789.", max_size=14))
def test_duration_pattern_agrees_with_the_parser(text: str) -> None:
    assert (re.search(openapi.DURATION_PATTERN, text) is not None) == _parses(text)


# --- ingest -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/ingest/twilio", "/v1/ingest/fork"])
def test_websocket_routes_document_protocol_auth_and_close_codes(
    doc: dict[str, Any], path: str
) -> None:
    operation = doc["paths"][path]["get"]
    assert "101" in operation["responses"]
    assert operation["x-roles"] == ["pbx"]
    assert operation["security"] == [{"bearerAuth": []}, {"ingestToken": []}, {}]
    assert doc["components"]["securitySchemes"]["ingestToken"]["name"] == "token"
    description = operation["description"]
    assert "Authorization: Bearer" in description and "?token=" in description
    close_codes = operation["x-websocket"]["close_codes"]
    assert {"1000", "1007", "1008", "1009", "1011"} <= set(close_codes)
    assert all(f"- {code}:" in description for code in close_codes)
    assert operation["x-websocket"]["max_message_bytes"] == 64 * 1024


def test_twilio_token_in_custom_parameters_is_documented(doc: dict[str, Any]) -> None:
    description = doc["paths"]["/v1/ingest/twilio"]["get"]["description"]
    assert "customParameters" in description and "`token`" in description


def test_audiosocket_protocol_is_documented(doc: dict[str, Any]) -> None:
    extension = doc["x-audiosocket"]
    assert set(extension["frame_kinds"]) == {"0x00", "0x01", "0x03", "0x10", "0xff"}
    assert "ASCII error code" in extension["frame_kinds"]["0xff"]
    assert extension["default_port"] == 9092
    assert "u16 big-endian" in extension["frame"]
    assert "ingest.audiosocket.id" in extension["frame_kinds"]["0x01"]
    for code in ("unknown_call", "already_attached", "peer_mismatch"):
        assert f"`{code}`" in extension["frame_kinds"]["0xff"]
        assert f"`{code}`" in extension["description"]
