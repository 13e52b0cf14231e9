"""Fixtures of the browser tier: Debian's chromium driven by Playwright (Python), and the
folder where the tests leave their screenshots (test artifacts, never committed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.parts import require_part

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ENV = "CALLVAULT_TEST_CHROMIUM"
ARTIFACTS_ENV = "CALLVAULT_TEST_ARTIFACTS"


def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``), or ``CALLVAULT_TEST_CHROMIUM``.
    Playwright's own browser download cannot work here (no internet at test time)."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("chromium")


def artifacts_dir(name: str) -> Path:
    """Where a test's screenshots go, emptied of an earlier run's:
    ``$CALLVAULT_TEST_ARTIFACTS/<name>``, by default ``test-artifacts/<name>`` in the
    checkout (ignored by git)."""
    base = Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "test-artifacts")
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a set is one run's: no stale pages beside it
        old.unlink()
    return folder


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless chromium, closed after the test."""
    executable = chromium_path()
    require_part(executable is not None, "Debian's chromium is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            yield launched
        finally:
            launched.close()
