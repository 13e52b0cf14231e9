"""``async_database_url``: from the setting operators write to the URL the catalog opens (and
``sync_database_url``, its synchronous sibling for the keyring kept in the catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto.errors import ConfigError
from storage.catalog import async_database_url, mask_database_url
from storage.catalog.urls import sync_database_url


def test_unset_means_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    expected = f"sqlite+aiosqlite:///{tmp_path.resolve()}/catalog.sqlite3"
    assert async_database_url(None, tmp_path) == expected
    assert async_database_url("  ", tmp_path) == expected


def test_a_relative_data_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert async_database_url(None, Path("var")) == (
        f"sqlite+aiosqlite:///{tmp_path.resolve()}/var/catalog.sqlite3"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql://db.internal:5432/callvault",
            "postgresql+asyncpg://db.internal:5432/callvault",
        ),
        ("postgres://u:p%40ss@h/cv?ssl=require", "postgresql+asyncpg://u:p%40ss@h/cv?ssl=require"),
        ("POSTGRESQL://h/cv", "postgresql+asyncpg://h/cv"),
        ("postgresql+asyncpg://h/cv", "postgresql+asyncpg://h/cv"),
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("sqlite:////abs/catalog.db", "sqlite+aiosqlite:////abs/catalog.db"),
        ("sqlite+aiosqlite:////abs/catalog.db", "sqlite+aiosqlite:////abs/catalog.db"),
    ],
)
def test_known_schemes_map_to_async_drivers(given: str, expected: str) -> None:
    assert async_database_url(given, Path("/unused")) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("mysql://u:topsecret@h/cv", "scheme 'mysql' is not supported"),
        ("postgresql+psycopg2://u:topsecret@h/cv", "is not supported"),
        ("not a url", "is not a URL"),
        ("postgresql://u:topsecret@h", "names no database"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///file::memory:?cache=shared&uri=true", "in-memory"),
        ("sqlite:///file:x?mode=memory&uri=true", "in-memory"),
    ],
)
def test_anything_else_is_a_config_error_naming_the_setting(given: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        async_database_url(given, Path("/unused"))
    assert caught.value.setting == "CALLVAULT_DATABASE_URL"
    assert says in str(caught.value)
    assert "topsecret" not in str(caught.value)


def test_masking_hides_only_the_password() -> None:
    assert (
        mask_database_url("postgresql+asyncpg://cv:topsecret@h:5432/cv")
        == "postgresql+asyncpg://cv:***@h:5432/cv"
    )
    assert mask_database_url("sqlite+aiosqlite:////var/c.db") == "sqlite+aiosqlite:////var/c.db"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p%40ss@h:5432/cv", "postgresql+psycopg://u:p%40ss@h:5432/cv"),
        ("postgresql+asyncpg://h/cv", "postgresql+psycopg://h/cv"),
        # asyncpg's ssl= is libpq's sslmode= (same values): TLS to the database is kept.
        ("postgres://h/cv?ssl=require", "postgresql+psycopg://h/cv?sslmode=require"),
        (
            "postgres://h/cv?ssl=require&sslmode=verify-full",
            "postgresql+psycopg://h/cv?sslmode=verify-full",
        ),
        ("sqlite:////abs/catalog.db", "sqlite+pysqlite:////abs/catalog.db"),
        ("sqlite+aiosqlite:////abs/catalog.db", "sqlite+pysqlite:////abs/catalog.db"),
    ],
)
def test_the_keyrings_synchronous_url_is_the_same_database(given: str, expected: str) -> None:
    url = sync_database_url(given, Path("/unused"))
    assert url.render_as_string(hide_password=False) == expected


def test_the_synchronous_url_refuses_what_the_catalog_refuses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not supported") as refused:
        sync_database_url("mysql://u:topsecret@h/cv", tmp_path)
    assert refused.value.setting == "CALLVAULT_DATABASE_URL"
    assert "topsecret" not in str(refused.value)
    assert sync_database_url(None, tmp_path).database == f"{tmp_path.resolve()}/catalog.sqlite3"
