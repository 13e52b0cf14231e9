"""The operator documents name the tests that back their claims: each named test exists.

docs/security.md's tables give, for every attack, the test that plays it
(``tests/<file>.py::<name>``, or ``::<name>`` for another test of the file named before it).
A renamed or deleted test would leave a claim with nothing behind it; this finds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
REFERENCE = re.compile(r"(tests/[\w/]+\.py)?::(test_\w+)")


def named_tests(text: str) -> list[tuple[str, str]]:
    """Every ``(file, test)`` a document names, ``::name`` taking the file last named."""
    found: list[tuple[str, str]] = []
    file = None
    for match in REFERENCE.finditer(text):
        file = match.group(1) or file
        if file is not None:
            found.append((file, match.group(2)))
    return found


def test_the_security_document_names_tests() -> None:
    assert len(named_tests((ROOT / "docs" / "security.md").read_text())) >= 50


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_test_a_document_names_exists(doc: Path) -> None:
    missing = []
    for file, name in named_tests(doc.read_text()):
        path = ROOT / file
        source = path.read_text() if path.exists() else ""
        if not re.search(rf"^(async )?def {name}\(", source, re.M):
            missing.append(f"{file}::{name}")
    assert missing == []
