"""How a pydantic ``ValidationError`` is told to a person: the offending field and a sentence.

Every document callvault validates with pydantic (an instructions document, a request body,
a call announcement) is refused the same way: the first offending field as a dotted path
(``retention.recordings``, ``exclude_numbers.2``; ``(body)`` for the document as a whole) and
a sentence in the API's words rather than pydantic's. Only the first error is reported: one
clear field and sentence is what a person fixes first, and the API's error has room for one
field. It lives in storage, below the gateway, because the instructions (storage) and the
request bodies (gateway) both use it.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def first_problem(error: ValidationError) -> tuple[str, str]:
    """The first offending field of ``error`` as a dotted path, and its sentence."""
    first = error.errors(include_url=False)[0]
    loc = first["loc"]
    if loc and loc[-1] == "[key]":
        # A bad mapping key (a category name): name the mapping; the message quotes the key.
        loc = loc[:-2]
    return ".".join(str(part) for part in loc) or "(body)", describe(first)


def describe(error: ErrorDetails) -> str:
    """A sentence for one pydantic error, in the API's words rather than pydantic's."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "bool_type":
        return "must be true or false (a JSON boolean, not a string or number)"
    if kind == "string_type":
        return "must be a string"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "must be a JSON object"
    if kind in ("tuple_type", "list_type"):
        return "must be a JSON array"
    if kind == "too_long":
        return f"must have at most {_entries(ctx.get('max_length'))}"
    if kind == "too_short":
        return f"must have at least {_entries(ctx.get('min_length'))}"
    if kind == "value_error" and "error" in ctx:
        # Our own validators' sentences (durations, numbers, language).
        return str(ctx["error"])
    return error["msg"]


def _entries(count: object) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"
