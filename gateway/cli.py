"""The ``callvault`` command line: builds the one ``Settings`` object and runs a command.

Settings come from the environment (``CALLVAULT_*``) and from the flags below, flags
winning. A setting that is wrong stops the process with one sentence naming it, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from crypto.errors import CallvaultError, ConfigError
from gateway.keyadmin import add_key_commands, run_key_command, warn_about_master_key
from gateway.logs import ACCESS, AccessLogger, configure_logging
from gateway.settings import Settings
from storage.catalog import AUDIT_REASONS, Role, iso

log = logging.getLogger("callvault")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callvault", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data directory (CALLVAULT_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (API, ingest, workers)")
    serve.add_argument(
        "--host",
        help="listen address (CALLVAULT_HTTP__HOST); beyond loopback it needs TLS "
        "(CALLVAULT_HTTP__TLS_CERT/KEY) or CALLVAULT_HTTP__TLS_OFFLOADED=true",
    )
    serve.add_argument("--port", type=int, help="listen port (CALLVAULT_HTTP__PORT)")

    commands.add_parser(
        "worker",
        help="run one AI worker process (transcription and analysis jobs from the catalog)",
    )

    add_key_commands(commands)

    audit = commands.add_parser("audit", help="check and anchor a tenant's keyed audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify",
        help="recompute the chain and check it against the latest checkpoint; exit 1 naming "
        "the first broken event",
    )
    verify.add_argument("--tenant", required=True, help="tenant id")
    checkpoint = audit_commands.add_parser(
        "checkpoint",
        help="sign the head of every chain that moved since its latest checkpoint now (what "
        "`serve` runs every CALLVAULT_AUDIT__CHECKPOINT_INTERVAL); exit 1 if one is broken",
    )
    checkpoint.add_argument("--tenant", help="only this tenant (default: every tenant)")
    rekey = audit_commands.add_parser(
        "rekey",
        help="re-key a tenant's unkeyed (SHA-256) chain from its first event now: for a chain "
        "an older version wrote after this one first started (the older ones were re-keyed "
        "then); it vouches for the chain as it is, so check it first",
    )
    rekey.add_argument("--tenant", required=True, help="tenant id")

    retention = commands.add_parser("retention", help="delete what retention windows ended")
    retention_commands = retention.add_subparsers(
        dest="retention_command", required=True, metavar="ACTION"
    )
    retention_commands.add_parser(
        "sweep",
        help="one retention sweep over every tenant now (what `serve` runs every "
        "CALLVAULT_RETENTION__SWEEP_INTERVAL); prints its report as JSON",
    )
    token = commands.add_parser("token", help="mint and revoke API tokens")
    token_commands = token.add_subparsers(dest="mint_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create", help="mint a token in the catalog (prints it once)"
    )
    create.add_argument(
        "--role", required=True, choices=["operator", "admin", "pbx", "processor"], help="role"
    )
    create.add_argument("--tenant", help="tenant id (every role but operator)")
    create.add_argument(
        "--expires-in", help="ISO-8601 duration the token lives (e.g. P90D; at most P1Y)"
    )
    create.add_argument(
        "--break-glass",
        metavar="REASON",
        help="why an admin or processor token is minted for a tenant that has an admin "
        "already (audited, sent to the tenant's webhook, expires within PT1H)",
    )
    revoke = token_commands.add_parser(
        "revoke", help="revoke a token of any role by its id (refused at once on every node)"
    )
    revoke.add_argument("token_id", metavar="ID", help="the token's id (tok_...)")

    demo = commands.add_parser(
        "demo", help="push a sample call through a running server and show what it stored"
    )
    demo.add_argument(
        "--url",
        help="the server's base URL (default http[s]://<CALLVAULT_HTTP__HOST>:<PORT>, https "
        "when CALLVAULT_HTTP__TLS_CERT is set)",
    )
    demo.add_argument("--token", help="an operator token (default: CALLVAULT_OPERATOR_TOKEN)")
    demo.add_argument(
        "--out", type=Path, default=Path("demo-call.wav"), help="where to save the call's audio"
    )
    demo.add_argument(
        "--realtime", action="store_true", help="pace the call like a live PBX (20 ms frames)"
    )
    demo.add_argument(
        "--cafile",
        type=Path,
        help="PEM CA certificate(s) to trust for an https:// URL, e.g. your own CA (default: "
        "the system's trust store, or the file SSL_CERT_FILE names)",
    )
    return parser


def build_settings(args: argparse.Namespace) -> Settings:
    """The environment, with the flags given on top (merged and validated alike)."""
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    http = {
        name: value for name in ("host", "port") if (value := getattr(args, name, None)) is not None
    }
    if http:
        overrides["http"] = http
    return Settings(**overrides)


def _serve(settings: Settings) -> None:
    from gateway import loops
    from gateway.app import build_app
    from gateway.connections import raise_file_limit, run_app
    from gateway.services import open_keyring
    from gateway.state import METRICS
    from gateway.tls import ServerTls, check_exposure

    check_exposure(settings.http)  # no plaintext beyond loopback unless TLS is offloaded
    tls = ServerTls(settings.http) if settings.http.tls else None
    warn_about_master_key(settings)  # only for a gateway that will start
    open_keyring(settings).close()  # refuse a wrong master key before binding any port
    if settings.ai.workers:
        _check_model(settings)
    secret = loops.run(_bootstrap(settings), loops.loop_kind(settings.http.loop))
    if secret is not None:
        print(
            "callvault: first start: this is the operator token. It is shown once and "
            "stored only as a hash; keep it now.\n"
            f"    {secret}\n"
            f"Try it: CALLVAULT_OPERATOR_TOKEN={secret} {_program()} demo",
            flush=True,
        )
    app = build_app(settings)
    if tls is not None:
        tls.reload_on_sighup(app)
    scheme = "https" if tls is not None else "http"
    base = f"{scheme}://{_url_host(settings.http.host)}:{settings.http.port}"
    print(
        f"callvault serving on {base} "
        f"(data dir {settings.data_dir.resolve()}"
        + (f"; TLS certificate sha256 {tls.fingerprint}, SIGHUP reloads it)" if tls else ")"),
        flush=True,
    )
    if settings.console.enabled:
        print(
            f"callvault console: {base}/console/ (sign in with an admin, processor or "
            "operator token)",
            flush=True,
        )
    raise_file_limit(settings)  # the connection caps need far more than the usual 1024
    try:
        # aiohttp's run_app, but through the connection caps and header timeout.
        run_app(
            app,
            settings.http,
            app[METRICS],
            ssl_context=tls.context if tls is not None else None,
            access_log=ACCESS,
            access_log_class=AccessLogger,
            shutdown_timeout=10,
        )
    except OSError as e:
        raise ConfigError(
            "CALLVAULT_HTTP__PORT",
            f"cannot listen on {settings.http.host}:{settings.http.port}: {e.strerror or e}",
        ) from None


def _url_host(host: str) -> str:
    """``host`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _check_model(settings: Settings) -> None:
    """Refuse to start with a model that is missing or fails its pinned sha256 (assembling
    a packaged model that ships in parts, once)."""
    from ai.models import resolve_model

    resolve_model(settings.ai.model, cache_dir=settings.model_cache_dir)


async def _work(settings: Settings) -> None:
    """One AI worker until SIGTERM/SIGINT: the job in hand is handed back (not counted as
    an attempt) and the process exits; a killed worker's job returns when its lease ends."""
    import signal

    from gateway.services import build_sender, build_worker, open_services

    loop = asyncio.get_running_loop()
    async with open_services(settings) as services:
        worker = build_worker(settings, services, now=lambda: datetime.now(UTC))
        sender = build_sender(settings, services, now=lambda: datetime.now(UTC))
        name = await worker.load()
        print(f"callvault worker {worker.owner} ready with model {name}", flush=True)
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(sender.run())]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: [task.cancel() for task in tasks])
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await worker.close()
            await sender.close()


def _program() -> str:
    """How the user ran us (``.venv/bin/callvault`` from ``make run``), for hints to copy."""
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return str(invoked) if invoked is not None and invoked.name == "callvault" else "callvault"


async def _bootstrap(settings: Settings) -> str | None:
    from gateway.auth import ensure_operator_token
    from gateway.services import open_services

    configured = settings.operator_token.get_secret_value() if settings.operator_token else None
    async with open_services(settings) as services:
        return await ensure_operator_token(services.catalog, configured, now=datetime.now(UTC))


async def _mint(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.auth import MAX_LIFETIME, mint_tenant_token, mint_token, token_expiry
    from gateway.services import open_services

    role: Role = args.role
    tenant: str | None = args.tenant
    if (role == "operator") != (tenant is None):
        raise ConfigError("--tenant", "operator tokens take no tenant; every other role needs one.")
    if role == "operator" and args.break_glass is not None:
        raise ConfigError("--break-glass", "is for admin and processor tokens of a tenant.")
    now = datetime.now(UTC)
    async with open_services(settings) as services:
        if tenant is None:
            expires_at = token_expiry(args.expires_in, now, longest=MAX_LIFETIME)
            minted = await mint_token(
                services.catalog,
                tenant=None,
                role=role,
                created_by="cli",
                now=now,
                expires_at=expires_at,
            )
        else:
            await services.catalog.tenants.get(tenant)
            # Whoever runs the CLI is the operator: the same rules as the API's.
            minted = await mint_tenant_token(
                services.catalog,
                actor="cli",
                by_operator=True,
                tenant=tenant,
                role=role,
                now=now,
                expires_in=args.expires_in,
                break_glass=args.break_glass,
                webhook_attempts=settings.webhooks.max_attempts,
            )
    expires = minted.record.expires_at
    until = f", expires {iso(expires)}" if expires else ""
    print(f"{minted.record.id} ({role}{' of ' + tenant if tenant else ''}{until}): {minted.secret}")


async def _revoke(settings: Settings, token_id: str) -> None:
    from gateway.services import open_services

    async with open_services(settings) as services:
        known = await services.catalog.tokens.get(token_id)
        token = await services.catalog.tokens.revoke(
            known.tenant_id, token_id, datetime.now(UTC), actor="cli"
        )
    whose = f" of tenant {token.tenant_id}" if token.tenant_id else ""
    when = iso(token.revoked_at) or "?"
    already = " already" if known.revoked_at is not None else ""
    print(f"{token.id}: {token.role} token{whose}, revoked{already} at {when}")


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    token = args.token or (
        settings.operator_token.get_secret_value() if settings.operator_token else None
    )
    if not token:
        raise ConfigError(
            "CALLVAULT_OPERATOR_TOKEN",
            "the demo needs an operator token: pass --token, or set this variable to the "
            "token `callvault serve` printed at its first start (or mint one with "
            "`callvault token create --role operator`).",
        )
    scheme = "https" if settings.http.tls else "http"
    url = args.url or f"{scheme}://{_url_host(settings.http.host)}:{settings.http.port}"
    return asyncio.run(
        run_demo(url, token, out=args.out, realtime=args.realtime, cafile=args.cafile)
    )


async def _verify_audit(settings: Settings, tenant: str) -> int:
    from gateway.services import open_services

    async with open_services(settings) as services:
        check = await services.catalog.audit.verify(tenant)
    anchored = "" if check.checkpoint is None else f", checkpoint at event {check.checkpoint}"
    if check.ok:
        print(f"tenant {tenant}: audit log intact, {check.count} event(s) verified{anchored}")
        return 0
    where = "" if check.broken_at is None else f" at event {check.broken_at}"
    reason = AUDIT_REASONS[check.reason] if check.reason is not None else "broken"
    print(
        f"tenant {tenant}: audit log BROKEN{where} ({check.count} event(s) read{anchored}): "
        f"{reason}",
        file=sys.stderr,
    )
    return 1


async def _checkpoint_audit(settings: Settings, tenant: str | None) -> int:
    from gateway.checkpoints import Checkpointer
    from gateway.services import open_services

    async with open_services(settings) as services:
        checkpointer = Checkpointer(services.catalog, max_attempts=settings.webhooks.max_attempts)
        now = datetime.now(UTC)
        if tenant is None:
            report = await checkpointer.make_due(now)
            made, broken = report.made, report.broken + report.failed
        else:
            await services.catalog.tenants.get(tenant)
            one = await checkpointer.make(tenant, now)
            made, broken = ([] if one is None else [one]), []
    for checkpoint in made:
        print(f"tenant {checkpoint.tenant_id}: checkpoint at event {checkpoint.seq} signed")
    if not made and not broken:
        print("no audit log moved since its latest checkpoint")
    for name in broken:
        print(
            f"tenant {name}: audit log not checkpointed (refused or failed, see the log) "
            f"(run `callvault audit verify --tenant {name}`)",
            file=sys.stderr,
        )
    return 1 if broken else 0


async def _rekey_audit(settings: Settings, tenant: str) -> None:
    from gateway.services import open_services

    async with open_services(settings) as services:
        rekeyed = await services.catalog.audit.rekey(tenant, datetime.now(UTC), operator=True)
    print(
        f"tenant {tenant}: audit log re-keyed from its first event (audit.rekeyed records the "
        "old head)"
        if rekeyed
        else f"tenant {tenant}: audit log already keyed; nothing done"
    )


async def _retention_sweep(settings: Settings) -> int:
    from gateway.services import build_sweeper, open_services

    async with open_services(settings) as services:
        report = await build_sweeper(settings, services).sweep(datetime.now(UTC))
    print(json.dumps(report.as_dict()))
    if report.failed_tenants:
        print(
            f"callvault: the sweep failed for tenant(s) {', '.join(report.failed_tenants)}; "
            "the next sweep finishes what was started",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(json_lines=args.command in ("serve", "worker"))
    try:
        settings = build_settings(args)
        if args.command == "serve":
            _serve(settings)
        elif args.command == "worker":
            warn_about_master_key(settings)
            _check_model(settings)
            asyncio.run(_work(settings))
        elif args.command == "audit" and args.audit_command == "verify":
            return asyncio.run(_verify_audit(settings, args.tenant))
        elif args.command == "audit" and args.audit_command == "checkpoint":
            return asyncio.run(_checkpoint_audit(settings, args.tenant))
        elif args.command == "audit" and args.audit_command == "rekey":
            asyncio.run(_rekey_audit(settings, args.tenant))
        elif args.command == "retention" and args.retention_command == "sweep":
            return asyncio.run(_retention_sweep(settings))
        elif args.command == "keys":
            return run_key_command(settings, args)
        elif args.command == "token" and args.mint_command == "create":
            asyncio.run(_mint(settings, args))
        elif args.command == "token" and args.mint_command == "revoke":
            asyncio.run(_revoke(settings, args.token_id))
        elif args.command == "demo":
            return _demo(settings, args)
    except ValidationError as e:
        first = e.errors()[0]
        where = "CALLVAULT_" + "__".join(str(p).upper() for p in first["loc"])
        print(f"callvault: {where}: {first['msg']}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"callvault: {e.message}", file=sys.stderr)
        return 2
    except CallvaultError as e:
        print(f"callvault: {e.code}: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
