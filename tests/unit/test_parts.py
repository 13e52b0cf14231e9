"""``require_part``: a missing external part skips locally and fails in CI."""

from __future__ import annotations

import pytest

from tests.parts import REQUIRE_PARTS_ENV, require_part


def test_an_available_part_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_PARTS_ENV, "1")
    require_part(True, "unused")


def test_a_missing_part_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_PARTS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        require_part(False, "no PostgreSQL")


def test_a_missing_part_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_PARTS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL"):
        require_part(False, "no PostgreSQL")
