"""Skip-or-fail for tests that need an external part (SeaweedFS, PostgreSQL, ffmpeg, ...).

On a developer machine a missing part skips its tests with the reason. In CI, which sets
``CALLVAULT_TEST_REQUIRE_PARTS=1``, a missing part fails them instead: a tier that silently
skips there is a tier that is not tested.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_PARTS_ENV = "CALLVAULT_TEST_REQUIRE_PARTS"


def parts_required() -> bool:
    """Whether this run must have every external part (CI)."""
    return os.environ.get(REQUIRE_PARTS_ENV) == "1"


def require_part(available: bool, reason: str) -> None:
    """Return if ``available``; else skip the test with ``reason``, or fail it in CI."""
    if available:
        return
    if parts_required():
        pytest.fail(f"{reason} ({REQUIRE_PARTS_ENV}=1, so this fails instead of skipping)")
    pytest.skip(reason)
