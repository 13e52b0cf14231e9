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

from aiohttp import web
from pydantic import ValidationError

from crypto.errors import CallvaultError, ConfigError
from gateway.logs import ACCESS, AccessLogger, configure_logging
from gateway.settings import Settings
from storage.catalog import AUDIT_REASONS, Role

log = logging.getLogger("callvault")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callvault", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data directory (CALLVAULT_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (API, ingest, workers)")
    serve.add_argument("--host", help="listen address (CALLVAULT_HTTP__HOST)")
    serve.add_argument("--port", type=int, help="listen port (CALLVAULT_HTTP__PORT)")

    commands.add_parser(
        "worker",
        help="run one AI worker process (transcription and analysis jobs from the catalog)",
    )

    keys = commands.add_parser("keys", help="manage tenants' key-encryption keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = key_commands.add_parser(
        "rotate", help="add a KEK version and re-wrap every DEK of the tenant"
    )
    rotate.add_argument("--tenant", required=True, help="tenant id")

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
    token = commands.add_parser("token", help="mint API tokens from the command line")
    token_commands = token.add_subparsers(dest="mint_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create", help="mint a token in the catalog (prints it once)"
    )
    create.add_argument(
        "--role", required=True, choices=["operator", "admin", "pbx", "processor"], help="role"
    )
    create.add_argument("--tenant", help="tenant id (every role but operator)")

    demo = commands.add_parser(
        "demo", help="push a sample call through a running server and show what it stored"
    )
    demo.add_argument(
        "--url", help="the server's base URL (default http://<CALLVAULT_HTTP__HOST>:<PORT>)"
    )
    demo.add_argument("--token", help="an operator token (default: CALLVAULT_OPERATOR_TOKEN)")
    demo.add_argument(
        "--out", type=Path, default=Path("demo-call.wav"), help="where to save the call's audio"
    )
    demo.add_argument(
        "--realtime", action="store_true", help="pace the call like a live PBX (20 ms frames)"
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
    from gateway.app import build_app
    from gateway.services import open_keyring

    open_keyring(settings)  # refuse a wrong master key before binding any port
    if settings.ai.workers:
        _check_model(settings)
    secret = asyncio.run(_bootstrap(settings))
    if secret is not None:
        print(
            "callvault: first start: this is the operator token. It is shown once and "
            "stored only as a hash; keep it now.\n"
            f"    {secret}\n"
            f"Try it: CALLVAULT_OPERATOR_TOKEN={secret} {_program()} demo",
            flush=True,
        )
    app = build_app(settings)
    print(
        f"callvault serving on http://{settings.http.host}:{settings.http.port} "
        f"(data dir {settings.data_dir.resolve()})",
        flush=True,
    )
    try:
        web.run_app(
            app,
            host=settings.http.host,
            port=settings.http.port,
            print=None,
            access_log=ACCESS,
            access_log_class=AccessLogger,
            shutdown_timeout=10,
        )
    except OSError as e:
        raise ConfigError(
            "CALLVAULT_HTTP__PORT",
            f"cannot listen on {settings.http.host}:{settings.http.port}: {e.strerror or e}",
        ) from None


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


async def _mint(settings: Settings, role: Role, tenant: str | None) -> None:
    from gateway.auth import mint_token
    from gateway.services import open_services

    if (role == "operator") != (tenant is None):
        raise ConfigError("--tenant", "operator tokens take no tenant; every other role needs one.")
    async with open_services(settings) as services:
        if tenant is not None:
            await services.catalog.tenants.get(tenant)
        minted = await mint_token(
            services.catalog, tenant=tenant, role=role, created_by="cli", now=datetime.now(UTC)
        )
        if tenant is not None:
            await services.catalog.audit.append(
                tenant,
                actor="cli",
                action="token.created",
                object=minted.record.id,
                detail={"role": role},
                now=datetime.now(UTC),
            )
    print(f"{minted.record.id} ({role}{' of ' + tenant if tenant else ''}): {minted.secret}")


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
    url = args.url or f"http://{settings.http.host}:{settings.http.port}"
    return asyncio.run(run_demo(url, token, out=args.out, realtime=args.realtime))


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
            made, broken = report.made, report.broken
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
            f"tenant {name}: audit log does not extend its latest checkpoint; not signed "
            f"(run `callvault audit verify --tenant {name}`)",
            file=sys.stderr,
        )
    return 1 if broken else 0


async def _rekey_audit(settings: Settings, tenant: str) -> None:
    from gateway.services import open_services

    async with open_services(settings) as services:
        rekeyed = await services.catalog.audit.rekey(tenant, datetime.now(UTC))
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


async def _rotate(settings: Settings, tenant: str) -> None:
    from gateway.services import open_services

    async with open_services(settings) as services:
        report = await services.vault.rotate_tenant_keys(tenant, actor="cli", now=datetime.now(UTC))
    print(
        f"tenant {tenant}: KEK {report.kek_id} is now at version {report.kek_version}; "
        f"{report.rewrapped} DEK(s) re-wrapped, no object rewritten"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(json_lines=args.command in ("serve", "worker"))
    try:
        settings = build_settings(args)
        if args.command == "serve":
            _serve(settings)
        elif args.command == "worker":
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
        elif args.command == "keys" and args.keys_command == "rotate":
            asyncio.run(_rotate(settings, args.tenant))
        elif args.command == "token" and args.mint_command == "create":
            asyncio.run(_mint(settings, args.role, args.tenant))
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
