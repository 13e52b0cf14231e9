"""The instructions form: a document drawn as form fields, and the posted fields as the
document the API's ``PUT .../instructions`` takes.

Pure functions over plain values, so the mapping is tested without a browser. The form is
not a second validator: what it cannot read as the document's types it passes on as text,
and the API's own validation answers (422 naming the field), which the page shows next to
that field. Checkboxes follow HTML: a box that is not ticked is not posted, so an absent
box is ``false``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from storage.instructions import AI_FEATURES

BOOLEANS = (
    ("recording.enabled", "Record call audio"),
    ("consent.required", "Require the parties' consent (announced by the PBX)"),
    *((f"ai.{feature}", feature.replace("_", "/").capitalize()) for feature in AI_FEATURES),
    ("transport.allow_unencrypted_rtp", "Accept plain (unencrypted) RTP"),
)
"""Every checkbox of the form: its dotted field and its label."""
REDACTION_BOOLEANS = (
    ("ai.redaction.transcript", "Redact personal data from the transcript and analysis"),
    ("ai.redaction.audio", "Redact it from the stored audio as well"),
    ("ai.redaction.keep_original", "Keep the unredacted transcript too (admins only)"),
)
"""The redaction section's checkboxes."""
RETENTION = (
    ("retention.recordings", "Recordings (audio)"),
    ("retention.transcripts", "Transcripts and analysis"),
    ("retention.call_records", "Call records"),
)
REDACTED = "<redacted>"


def _get(document: Mapping[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def form_values(document: Mapping[str, Any]) -> dict[str, Any]:
    """The form's fields of an instructions document (as the API shows it)."""
    values: dict[str, Any] = {name: bool(_get(document, name)) for name, _ in BOOLEANS}
    for name, _ in RETENTION:
        values[name] = _get(document, name) or ""
    values["ai.language"] = _get(document, "ai.language") or "auto"
    categories = _get(document, "ai.categories") or {}
    values["ai.categories"] = "\n".join(
        f"{name}: {phrase}"
        for name, phrases in categories.items()
        if isinstance(phrases, list)
        for phrase in phrases
    )
    rules = {name: rule for name, rule in categories.items() if isinstance(rule, Mapping)}
    values["ai.category_rules"] = json.dumps(rules, indent=1, ensure_ascii=False) if rules else ""
    for name, _ in REDACTION_BOOLEANS:
        values[name] = bool(_get(document, name))
    values["ai.redaction.entities"] = ", ".join(_get(document, "ai.redaction.entities") or ["all"])
    values["ai.redaction.fill"] = _get(document, "ai.redaction.fill") or "silence"
    values["ai.redaction.padding_ms"] = str(_get(document, "ai.redaction.padding_ms") or 250)
    values["exclude_numbers"] = "\n".join(document.get("exclude_numbers") or [])
    values["webhook.url"] = _get(document, "webhook.url") or ""
    values["webhook.secret"] = REDACTED if _get(document, "webhook.secret") else ""
    return values


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _categories(text: str) -> Any:
    """``name: phrase`` per line (a category's phrases on lines of their own, so a phrase
    may hold commas and colons; a name cannot) as the document's mapping; a line without a
    colon is handed on as it is, for the API to name ``ai.categories`` in its answer."""
    categories: dict[str, list[str]] = {}
    for line in _lines(text):
        name, colon, phrase = line.partition(":")
        if not colon:
            return line
        categories.setdefault(name.strip(), []).append(phrase.strip())
    return categories


def _category_rules(text: str, categories: Any) -> Any:
    """The rule categories (a JSON object of them) added to the phrase categories; text
    that is not such an object is handed on as it is, for the API to refuse."""
    if not text.strip():
        return categories
    try:
        rules = json.loads(text)
    except ValueError:
        return text
    if not isinstance(rules, dict) or not isinstance(categories, dict):
        return text if not isinstance(rules, dict) else categories
    if set(rules) & set(categories):
        return text  # one name in both fields: refused (ai.categories), never one dropped
    return {**categories, **rules}


def _number(text: str) -> Any:
    """A whole number of 1 to 9 digits as an int; anything else as the text, for the API to
    refuse (naming the field)."""
    stripped = text.strip()
    return (
        int(stripped)
        if stripped.isascii() and stripped.isdigit() and len(stripped) < 10
        else stripped
    )


def document_of(form: Mapping[str, str]) -> dict[str, Any]:
    """The instructions document of a posted form (every section; PUT replaces it whole)."""
    document: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        *parents, leaf = dotted.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    for name, _ in BOOLEANS:
        put(name, name in form)
    for name, _ in RETENTION:
        put(name, form.get(name, "").strip())
    put("ai.language", form.get("ai.language", "auto").strip() or "auto")
    categories = _categories(form.get("ai.categories", ""))
    put("ai.categories", _category_rules(form.get("ai.category_rules", ""), categories))
    for name, _ in REDACTION_BOOLEANS:
        put(name, name in form)
    entities = [e.strip() for e in form.get("ai.redaction.entities", "all").split(",")]
    put("ai.redaction.entities", [e for e in entities if e])
    put("ai.redaction.fill", form.get("ai.redaction.fill", "silence").strip())
    put("ai.redaction.padding_ms", _number(form.get("ai.redaction.padding_ms", "250")))
    document["exclude_numbers"] = _lines(form.get("exclude_numbers", ""))
    url = form.get("webhook.url", "").strip()
    put("webhook.url", url or None)
    secret = form.get("webhook.secret", "")
    put("webhook.secret", (secret or None) if url else None)
    return document


def field_of(error_field: str) -> str:
    """The form field that shows an API error about ``error_field`` (``exclude_numbers.2``
    and ``ai.categories.sales`` are shown at their list's field)."""
    if error_field.startswith("ai.categories.") and ".rules" in error_field:
        return "ai.category_rules"  # inside a rule category: ai.categories.name.rules.0...
    for prefix in ("exclude_numbers", "ai.categories", "ai.redaction.entities"):
        if error_field == prefix or error_field.startswith(prefix + "."):
            return prefix
    return error_field


def flatten(document: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf of a document as ``dotted.path -> JSON-ish text``, for a version diff."""
    if isinstance(document, Mapping):
        leaves: dict[str, str] = {}
        for key, value in document.items():
            leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    if isinstance(document, list):
        return {prefix: ", ".join(str(item) for item in document) or "(none)"}
    if document is None:
        return {prefix: "(none)"}
    if isinstance(document, bool):
        return {prefix: "on" if document else "off"}
    return {prefix: str(document)}


METADATA = ("version", "created_at", "created_by")


def diff(older: Mapping[str, Any], newer: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(field, before, after)`` for every field whose value differs between two versions
    (their metadata aside), in field order."""
    before = flatten({k: v for k, v in older.items() if k not in METADATA})
    after = flatten({k: v for k, v in newer.items() if k not in METADATA})
    return [
        (name, before.get(name, "(absent)"), after.get(name, "(absent)"))
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]
