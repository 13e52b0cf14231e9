"""Turning the ``CALLVAULT_DATABASE_URL`` setting into the URLs the catalog opens.

Operators write the URLs they know (``postgresql://host/db``, ``sqlite:///path``); the
catalog runs on SQLAlchemy's asyncio drivers (asyncpg, aiosqlite), so the scheme is mapped
here, once, and anything the catalog cannot run on is refused at start with the setting named.
The keyring kept in the catalog (``storage.keyring``) works in threads and opens the same
database through synchronous drivers (psycopg, the standard library's sqlite3):
``sync_database_url`` derives its URL from the async one.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from crypto.errors import ConfigError

SETTING = "CALLVAULT_DATABASE_URL"
DEFAULT_SQLITE_NAME = "catalog.sqlite3"

_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def mask_database_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable as a URL: keep only the scheme so that nothing secret leaks.
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://***" if sep else "***"


def async_database_url(url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy async URL of the catalog.

    ``None`` (or an empty setting) means the SQLite file ``<data_dir>/catalog.sqlite3``;
    ``postgresql://`` and ``postgres://`` become ``postgresql+asyncpg://``; ``sqlite:///x``
    becomes ``sqlite+aiosqlite:///x``; URLs already naming those drivers are returned
    unchanged. Anything else raises ``ConfigError`` naming ``CALLVAULT_DATABASE_URL``.
    """
    if url is None or not url.strip():
        path = data_dir.resolve() / DEFAULT_SQLITE_NAME
        return f"sqlite+aiosqlite:///{path}"
    url = url.strip()
    masked = mask_database_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(SETTING, f"{masked!r} is not a URL; use postgresql:// or sqlite:///.")
    driver = _SCHEMES.get(scheme.lower())
    if driver is None:
        raise ConfigError(
            SETTING,
            f"the scheme {scheme!r} is not supported; use postgresql://host/db "
            "or sqlite:///path (or leave it unset for SQLite in the data dir).",
        )
    converted = f"{driver}://{rest}"
    try:
        parsed = make_url(converted)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(SETTING, f"{masked!r} is not a valid database URL.") from exc
    if driver == "sqlite+aiosqlite":
        database = parsed.database or ""
        if not database or ":memory:" in database or "mode=memory" in rest:
            raise ConfigError(
                SETTING,
                "an in-memory SQLite catalog would vanish with the process; "
                "give a file path (sqlite:///path) or leave it unset.",
            )
    elif not parsed.database:
        raise ConfigError(SETTING, f"{masked!r} names no database; add /<database>.")
    return converted


_SYNC_DRIVERS = {"postgresql+asyncpg": "postgresql+psycopg", "sqlite+aiosqlite": "sqlite+pysqlite"}


def sync_database_url(url: str | None, data_dir: Path) -> URL:
    """The synchronous sibling of ``async_database_url`` (same database, same checks):
    psycopg for PostgreSQL, sqlite3 for SQLite. asyncpg's ``ssl`` query parameter is
    libpq's ``sslmode`` (they take the same values), so a URL asking for TLS keeps it."""
    parsed = make_url(async_database_url(url, data_dir))
    parsed = parsed.set(drivername=_SYNC_DRIVERS[parsed.drivername])
    query = dict(parsed.query)
    if parsed.drivername == "postgresql+psycopg" and "ssl" in query:
        ssl = query.pop("ssl")
        query.setdefault("sslmode", ssl)
        parsed = parsed.set(query=query)
    return parsed
