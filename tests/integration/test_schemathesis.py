"""Schemathesis against the served OpenAPI document, once with each role's token.

What it proves: for every operation that ``GET /v1/openapi.json`` lists, the requests that
schemathesis derives from the document (its examples; the coverage phase's boundary,
missing and wrong-typed values and unexpected methods; random fuzzing, valid and invalid)
get, with an ``operator``, ``admin``, ``pbx`` or ``processor`` token, no 5xx, only statuses
the document lists for that operation, and bodies that match the documented schema
(checks ``not_a_server_error``, ``status_code_conformance``,
``response_schema_conformance``). So the document is the contract the handlers keep, for
the answers a role gets as much as for the refusals (401, 403, 404 on another tenant).

The gateway is ``callvault serve`` on a free loopback port with its own data dir. Each role
fuzzes a tenant of its own, filled through the API beforehand (instructions that record, a
call streamed to its end so a recording exists, a call left live, a legal hold), and
schemathesis is told those ids (a dictionary drawn for 80 % of the path parameters), so
requests reach the handlers' logic and not only the 404 of an unknown id. It also reuses the
ids it reads in answers (``tok_...`` from the token list, for one). Two operations would
let a run saw off the branch it sits on, so their id is pinned: ``DELETE .../tokens/{id}``
and ``DELETE /v1/operator/tokens/{id}`` always revoke a spare token (never the run's own)
and ``DELETE /v1/tenants/{tenant}`` always deletes a tenant kept for it. Each run then
checks that its token still works, so a run that locked itself out cannot pass by seeing
only 401s. Only the operator reaches other tenants, and there it can only read and mint
tokens; so the runs do not depend on their order.

No 5xx, no unhandled exception, no hang: a 5xx fails ``not_a_server_error`` (an unexpected
exception in a handler is a 500 from the error middleware); a request unanswered within
``REQUEST_TIMEOUT_S`` is a schemathesis network error, which fails the run, and a run past
``RUN_TIMEOUT_S`` fails the test; and serve's log, from the run's first request to its
last, must hold no line at level error or critical, no line carrying a traceback, and no
bare Python traceback, so that an exception the client never saw as a 5xx (an export
stopped after its 200, a background task that failed, a traceback logged while the answer
was a 4xx) fails the test too.

Bounded and reproducible: a fixed seed, one worker, at most ``MAX_EXAMPLES`` generated cases
per operation in the fuzzing phase (the coverage phase's cases are a fixed set), no stateful
phase, schemathesis's crash cache off and hypothesis's files in the test's temporary dir.
A failure shows schemathesis's report (the operation, the check, the status, a curl command
with the token filtered, the seed) and the ``st`` command and config that ran.

Rerun alone: ``pytest tests/integration/test_schemathesis.py`` (one role: ``-k admin``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway import RECORD, Gateway, Server, bearer, record_call, serve

pytestmark = pytest.mark.timeout(120)

ROLES = ("processor", "pbx", "admin", "operator")
SEED = 20261128
MAX_EXAMPLES = 10
RUN_TIMEOUT_S = 90
REQUEST_TIMEOUT_S = 10
CHECKS = ("not_a_server_error", "status_code_conformance", "response_schema_conformance")
PHASES = ("examples", "coverage", "fuzzing")
KNOWN_ID_PROBABILITY = 0.8
"""How often a path parameter takes a real id of the run's tenant rather than a generated
value (which exercises the 404s and the parameter checks)."""
DOOMED_TENANT = "doomed"
"""The only tenant ``DELETE /v1/tenants/{tenant}`` may delete."""


@dataclass(frozen=True)
class Fuzzed:
    """One role's run: its token, its tenant and the ids the tenant holds."""

    role: str
    token: str
    tenant: str
    spare_token_id: str
    """A token of the tenant that ``DELETE .../tokens/{token_id}`` revokes instead of any
    other (the run's own token among them)."""
    spare_operator_token_id: str
    """The operator token that ``DELETE /v1/operator/tokens/{token_id}`` revokes."""
    known: dict[str, list[str]]
    """Path parameter -> ids of the tenant that exist."""


@dataclass(frozen=True)
class Target:
    server: Server
    runs: dict[str, Fuzzed]


async def fill_tenant(gateway: Gateway, role: str) -> Fuzzed:
    """A tenant for ``role``'s run, with a recorded call, a live call and a legal hold;
    the operator's token is global, the others are the tenant's own."""
    tenant = await gateway.tenant(f"fuzz-{role}", RECORD)
    recorded = await record_call(gateway, tenant)
    live = await gateway.announce(tenant)
    async with gateway.client.post(
        f"/v1/tenants/{tenant.id}/tokens", json={"role": "processor"}, headers=bearer(tenant.admin)
    ) as response:
        assert response.status == 201, await response.text()
        spare = await response.json()
    async with gateway.client.post(
        "/v1/operator/tokens", json={}, headers=bearer(gateway.operator)
    ) as response:
        assert response.status == 201, await response.text()
        spare_operator = await response.json()
    async with gateway.client.post(
        f"/v1/tenants/{tenant.id}/legal-holds",
        json={"call_ids": [recorded.call_id], "reason": "a case"},
        headers=bearer(tenant.admin),
    ) as response:
        assert response.status == 201, await response.text()
        hold = await response.json()
    token = gateway.operator if role == "operator" else getattr(tenant, role)
    return Fuzzed(
        role=role,
        token=token,
        tenant=tenant.id,
        spare_token_id=spare["id"],
        spare_operator_token_id=spare_operator["id"],
        known={
            "tenant": [tenant.id],
            "recording_id": [recorded.recording_id],
            "call_id": [str(live["call_id"]), recorded.call_id],
            "hold_id": [hold["id"]],
        },
    )


async def fill(server: Server) -> dict[str, Fuzzed]:
    async with aiohttp.ClientSession(base_url=server.base) as session:
        # A ClientSession with a base URL answers what tests.gateway.Gateway asks of its
        # TestClient, as in test_e2e_gateway.
        gateway = Gateway(client=session, operator=server.operator)  # type: ignore[arg-type]
        runs = {role: await fill_tenant(gateway, role) for role in ROLES}
        async with session.post(
            "/v1/tenants",
            json={"id": DOOMED_TENANT, "name": "Doomed"},
            headers=bearer(server.operator),
        ) as response:
            assert response.status == 201, await response.text()
    return runs


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One ``callvault serve`` for the module, its tenants filled."""
    with serve(tmp_path_factory.mktemp("schemathesis"), "var", CALLVAULT_AI__WORKERS="0") as server:
        yield Target(server, asyncio.run(fill(server)))


def toml(value: Any) -> str:
    """A TOML value: the config holds only ids, numbers and flat tables, which JSON's
    syntax for strings, numbers and arrays writes as TOML does."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def config(run: Fuzzed) -> str:
    """The schemathesis config of ``run``: its ids as dictionaries bound to the path
    parameters, the two destructive operations pinned, the crash cache off (a cached crash
    would be replayed by the next run, which then depends on the one before)."""
    lines = ["[cache]", "enabled = false", ""]
    for name, ids in run.known.items():
        lines += [f"[dictionaries.{name}]", f"values = {toml(ids)}", ""]
    lines.append("[parameters]")
    for name in run.known:
        binding = {"dictionary": name, "probability": KNOWN_ID_PROBABILITY}
        lines.append(f'"path.{name}" = {toml(binding)}')
    # A fixed value goes out in every case of the operation, in place of generated values,
    # dictionary draws and ids read in answers alike. ``include-name`` selects exactly one
    # operation (``include-path`` with ``include-method`` would select every DELETE).
    pinned = {
        "DELETE /v1/tenants/{tenant}/tokens/{token_id}": {"path.token_id": run.spare_token_id},
        "DELETE /v1/operator/tokens/{token_id}": {"path.token_id": run.spare_operator_token_id},
        "DELETE /v1/tenants/{tenant}": {"path.tenant": DOOMED_TENANT},
    }
    for name, parameters in pinned.items():
        lines += ["", "[[operations]]", f"include-name = {toml(name)}"]
        lines.append(f"parameters = {toml(parameters)}")
    return "\n".join(lines) + "\n"


def st_command(base: str, config_path: Path, token: str) -> list[str]:
    return [
        *("--config-file", str(config_path), "run", f"{base}/v1/openapi.json"),
        *("--header", f"Authorization: Bearer {token}"),
        *("--phases", ",".join(PHASES), "--checks", ",".join(CHECKS)),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1"),
        *("--request-timeout", str(REQUEST_TIMEOUT_S), "--generation-database", "none"),
        "--no-color",
    ]


def log_problems(text: str) -> list[str]:
    """The lines of serve's log (JSON lines) that report something failing unexpectedly:
    level error or critical, or an ``error`` field (logged with a traceback, at any
    level); and any line outside JSON that starts a Python traceback."""
    problems = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback (most recent call last)" in line:
                problems.append(line)
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("level") in ("error", "critical") or "error" in entry:
            problems.append(line)
    return problems


def still_authenticates(base: str, run: Fuzzed) -> int:
    """The status of a request with the run's token: anything but 401 means the token
    survived the run (a pbx or processor token gets 403 here, which is fine)."""
    request = urllib.request.Request(  # noqa: S310 - the loopback URL of our own server
        f"{base}/v1/tenants/{run.tenant}", headers=bearer(run.token)
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.parametrize("role", ROLES)
def test_the_served_document_holds_for_every_request_schemathesis_makes(
    target: Target, role: str, tmp_path: Path
) -> None:
    run = target.runs[role]
    config_path = tmp_path / "schemathesis.toml"
    config_path.write_text(config(run))
    command = st_command(target.server.base, config_path, run.token)
    # Hypothesis keeps its caches (unicode tables) in its storage directory: the test's.
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / ".hypothesis")}
    by_hand = shlex.join(["st", *command]).replace(
        shlex.quote(f"Authorization: Bearer {run.token}"), '"Authorization: Bearer $TOKEN"'
    )
    log_path = target.server.process.log_path
    log_start = log_path.stat().st_size
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and an installed module
            [sys.executable, "-m", "schemathesis.cli", *command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        partial = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode()
        pytest.fail(
            f"schemathesis with the {role} token ran past {RUN_TIMEOUT_S} s (a hang?):\n"
            f"{partial[-4000:]}\nBy hand: {by_hand}"
        )
    report = result.stdout + result.stderr
    with log_path.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    problems = log_problems(logged)
    assert result.returncode == 0, (
        f"schemathesis with the {role} token (seed {SEED}) found failures:\n{report}\n"
        f"Rerun: pytest tests/integration/test_schemathesis.py -k {role}\n"
        f"By hand, with TOKEN the {role} token: {by_hand}\nwhere {config_path} holds:\n"
        f"{config_path.read_text()}"
    )
    assert not problems, (
        f"serve logged failures during the {role} run (seed {SEED}), though no 5xx may "
        "have shown them:\n" + "\n".join(problems[:20])
    )
    # A run that revoked its own token would have seen only 401s from then on.
    assert still_authenticates(target.server.base, run) != 401, report


def test_a_malformed_header_is_refused_without_an_error_or_the_token_in_the_log(
    target: Target,
) -> None:
    """A request aiohttp cannot parse (a control character after the token in its
    ``Authorization`` header) gets a 400, and serve logs a warning naming the peer, not an
    error whose traceback quotes the header, token and all (``gateway.logs``)."""
    log_path = target.server.process.log_path
    log_start = log_path.stat().st_size
    with socket.create_connection(("127.0.0.1", target.server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v1/tenants HTTP/1.1\r\nHost: callvault\r\n"
            + f"Authorization: Bearer {target.server.operator}".encode()
            + b"\x01\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400"), answer
    with log_path.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    assert "malformed HTTP request" in logged
    assert target.server.operator not in logged
    assert log_problems(logged) == []


def test_log_problems_are_errors_tracebacks_and_bare_tracebacks() -> None:
    """What the scan of serve's log counts as a failure, and what it leaves alone."""
    lines = [
        '{"level": "info", "logger": "callvault.access", "message": "GET /v1/x 404"}',
        '{"level": "warning", "logger": "gateway.api", "message": "refused"}',
        '{"level": "error", "logger": "gateway.api.recordings", "message": "export stopped"}',
        '{"level": "critical", "logger": "gateway", "message": "down"}',
        '{"level": "warning", "logger": "aiohttp.server", "message": "x", "error": "Tb..."}',
        "Traceback (most recent call last):",
        '  File "gateway/app.py", line 1, in <module>',
        "not json, and no traceback",
    ]
    assert log_problems("\n".join(lines)) == [lines[2], lines[3], lines[4], lines[5]]
