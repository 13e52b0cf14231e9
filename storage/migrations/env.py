"""Alembic's entry point for the catalog's migrations.

``Catalog.migrate()`` runs Alembic programmatically and hands over its own (synchronous view
of an async) connection in ``config.attributes["connection"]``, inside a transaction it opened
and locked; migrations then run in that transaction. Run by hand (see ``alembic.ini``), the
URL comes from ``-x url=...`` and an async engine is made for it here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from storage.catalog.schema import metadata
from storage.catalog.urls import async_database_url

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def command_line_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the catalog URL: alembic -x url=postgresql://host/db ...")
    return async_database_url(url, Path("."))


async def run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=command_line_url(),
            target_metadata=metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        run_migrations(connection)
    else:
        asyncio.run(run_async(command_line_url()))


main()
