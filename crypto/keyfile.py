"""The keyring file as a document of wrapped values, and how it moves to a new master key.

Every secret in ``keyring.json`` (the check value, each KEK version, and whatever else is
kept beside them) is a *slot*: a base64 value wrapped by the master key and bound to its
place by an AAD context. A registry of sections (``Sections``: a section's name and a
function listing its slots with their contexts) is all this module knows of the file, so
the master-key rotation re-wraps every secret, whatever it is, and a section someone adds
takes one line in the registry (``crypto.keys.WRAPPED_SECTIONS``). A section that is in
neither the registry nor the plain sections is refused, so a secret can never be left
behind under the old key by a rotation that did not know of it.

A master-key rotation never replaces a wrap in place, so a crash never strands the keyring:
phase one (``add_side``) rewrites the file with every slot wrapped under both keys,
``{"old": ..., "new": ...}``, so that either key opens it; phase two (``keep_side``) drops
one side, after checking that every wrap of the side it keeps opens under its key. Each
phase is one atomic replace of the file (``write_file``).

While both sides exist, a process holding one key reads its own side (``select``) and,
when it writes, keeps both sides of every value it did not change (``merge``). A value it
adds or changes carries its own side only, until a holder of both keys fills in the other
(``add_side`` again, or ``keep_side`` given both keys).
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.objectformat import unwrap_key, wrap_key

Side = Literal["old", "new"]
OLD: Side = "old"
NEW: Side = "new"

SlotPath = tuple[str, ...]
"""Where a wrapped value sits in the document: its section, then keys inside it."""
SlotWalker = Callable[[Any], Iterable[tuple[SlotPath, bytes]]]
"""Given a section's JSON value, each wrapped value in it: its path inside the section
(``()`` when the section is the value) and the AAD context it was wrapped with. It reads the
section's structure only, never the wrapped values (which may be one-side or two-side)."""
Sections = Mapping[str, SlotWalker]

CHECK_CONTEXT = b"callvault/keyring/check"
CHECK_PLAINTEXT = b"callvault keyring check value v1"
"""A known value wrapped by the master key: it tells at once whether a key opens the file."""


def one(context: bytes) -> SlotWalker:
    """A section that is one wrapped value (the check value, a signing key)."""
    return lambda _section: [((), context)]


def per_name(context: Callable[[str], bytes]) -> SlotWalker:
    """A section mapping names (tenants) to one wrapped value each."""
    return lambda section: [((name,), context(name)) for name in section]


def slots(doc: Mapping[str, Any], sections: Sections, plain: Iterable[str]) -> list[SlotPath]:
    """Every slot of the document with its context, section by section.

    Raises ``ValueError`` for a section that is neither plain nor registered."""
    return [path for path, _ in contexts(doc, sections, plain)]


def contexts(
    doc: Mapping[str, Any], sections: Sections, plain: Iterable[str]
) -> list[tuple[SlotPath, bytes]]:
    """Every slot of the document with the AAD context it is wrapped with."""
    plain = frozenset(plain)
    found: list[tuple[SlotPath, bytes]] = []
    for name, value in doc.items():
        if name in plain:
            continue
        walker = sections.get(name)
        if walker is None:
            raise ValueError(
                f"section {name!r} is neither registered as wrapped nor as plain; "
                "a master-key rotation could not re-wrap it"
            )
        found += [((name, *inner), context) for inner, context in walker(value)]
    return found


def in_rotation(doc: Mapping[str, Any]) -> bool:
    """Whether the document holds two sides (a master-key rotation is in progress)."""
    return isinstance(doc.get("check"), dict)


def side_of(doc: Mapping[str, Any], key: bytes) -> Side | None:
    """The side ``key`` opens: ``None`` when no rotation is in progress (and it opens the
    file), else ``"old"`` or ``"new"``. ``DecryptionFailed`` when it opens neither."""
    check = doc["check"]
    if not isinstance(check, dict):
        _unwrap(key, check, CHECK_CONTEXT)
        return None
    for side in (OLD, NEW):
        if side in check:
            try:
                _unwrap(key, check[side], CHECK_CONTEXT)
            except DecryptionFailed:
                continue
            return side
    raise DecryptionFailed("the key opens neither side of the keyring's check value")


def new_check(key: bytes) -> str:
    """A check value for a new keyring under ``key``."""
    return _wrap(key, CHECK_PLAINTEXT, CHECK_CONTEXT)


def select(
    doc: Mapping[str, Any], side: Side | None, sections: Sections, plain: Iterable[str]
) -> Any:
    """The document as the holder of ``side`` sees it: one wrap per slot.

    A slot with no wrap of this side yet (added by a holder of the other key) shows the
    other side's wrap: it does not open (``KeyUnavailable`` where it is used), and written
    back unchanged it keeps both sides (``merge``)."""
    view = copy.deepcopy(dict(doc))
    if side is None:
        return view
    for path in slots(view, sections, plain):
        slot = _get(view, path)
        if isinstance(slot, dict):
            _set(view, path, slot[side] if side in slot else next(iter(slot.values())))
    return view


def merge(
    new: dict[str, Any],
    previous: Mapping[str, Any],
    side: Side | None,
    sections: Sections,
    plain: Iterable[str],
) -> dict[str, Any]:
    """``new`` (written by the holder of ``side``: one wrap per slot) with both sides kept
    for every value it left unchanged, taken from ``previous`` (the file it read)."""
    if side is None:
        return new
    for path in slots(new, sections, plain):
        wrap = _get(new, path)
        before = _find(previous, path)
        if isinstance(before, dict) and wrap in before.values():
            _set(new, path, before)
        else:
            _set(new, path, {side: wrap})
    return new


def add_side(
    doc: Mapping[str, Any],
    old_key: bytes,
    new_key: bytes,
    sections: Sections,
    plain: Iterable[str],
) -> dict[str, Any]:
    """Phase one: every slot wrapped under both keys.

    From a one-key document that ``old_key`` opens, or to complete one in rotation (values
    added since by holders of one key get the other side). Every existing wrap is checked
    to open under its key; ``KeyUnavailable`` names the first that does not, and
    ``DecryptionFailed`` says that a rotation to another key is in progress."""
    out = copy.deepcopy(dict(doc))
    if in_rotation(out) and side_of(out, new_key) != NEW:
        raise DecryptionFailed("a rotation to another master key is in progress")
    keys = {OLD: old_key, NEW: new_key}
    for path, context in contexts(out, sections, plain):
        slot = _get(out, path)
        sides: dict[Side, str] = (
            {side: slot[side] for side in (OLD, NEW) if side in slot}
            if isinstance(slot, dict)
            else {OLD: slot}
        )
        if not sides:
            raise KeyUnavailable(f"keyring value {'/'.join(path)} has no wrap; nothing changed")
        for side, wrap in sides.items():
            value = _open_slot(keys[side], wrap, context, path, side)
        _set(
            out,
            path,
            {side: sides.get(side) or _wrap(keys[side], value, context) for side in (OLD, NEW)},
        )
    return out


def keep_side(
    doc: Mapping[str, Any],
    keep: Side,
    keys: Mapping[Side, bytes],
    sections: Sections,
    plain: Iterable[str],
) -> tuple[dict[str, Any], int]:
    """Phase two: only the ``keep`` side stays, every slot one wrap under ``keys[keep]``.

    Every kept wrap is first checked to open under that key, so a wrong key never leaves a
    file nothing opens. A value that has only the other side is re-wrapped when ``keys``
    holds the other key too, else ``KeyUnavailable`` says how many lack the kept side and
    nothing changes. Returns the document and the number of values it holds."""
    other: Side = OLD if keep == NEW else NEW
    out = copy.deepcopy(dict(doc))
    found = contexts(out, sections, plain)
    missing = 0
    for path, context in found:
        slot = _get(out, path)
        if not isinstance(slot, dict):
            raise ValueError("no master-key rotation is in progress")
        if keep in slot:
            _open_slot(keys[keep], slot[keep], context, path, keep)
            _set(out, path, slot[keep])
        elif other in keys:
            value = _open_slot(keys[other], slot[other], context, path, other)
            _set(out, path, _wrap(keys[keep], value, context))
        else:
            missing += 1
    if missing:
        raise KeyUnavailable(
            f"{missing} value(s) of the keyring have no {keep} side yet (added by a process "
            f"holding only the {other} master key since the rotation began); finishing "
            f"needs the {other} key too"
        )
    return out, len(found)


def open_all(doc: Mapping[str, Any], key: bytes, sections: Sections, plain: Iterable[str]) -> int:
    """Check that every value of a one-key document opens under ``key``: ``KeyUnavailable``
    names the first that does not. Returns how many values it holds."""
    found = contexts(doc, sections, plain)
    for path, context in found:
        slot = _get(doc, path)
        if isinstance(slot, dict):
            raise ValueError("a master-key rotation is in progress")
        try:
            _unwrap(key, slot, context)
        except (DecryptionFailed, binascii.Error, ValueError):
            raise KeyUnavailable(
                f"keyring value {'/'.join(path)} does not open under the master key"
            ) from None
    return len(found)


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data`` (mode 0600): a temporary file, fsync,
    rename over it, fsync of the directory. A crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_slot(key: bytes, wrap: str, context: bytes, path: SlotPath, side: str) -> bytes:
    try:
        return _unwrap(key, wrap, context)
    except DecryptionFailed:
        raise KeyUnavailable(
            f"the {side} side of keyring value {'/'.join(path)} does not open under its "
            "master key; nothing was changed"
        ) from None


def _wrap(key: bytes, value: bytes, context: bytes) -> str:
    return base64.b64encode(wrap_key(key, value, context=context)).decode()


def _unwrap(key: bytes, wrap: str, context: bytes) -> bytes:
    return unwrap_key(key, base64.b64decode(wrap), context=context)


def _get(doc: Any, path: SlotPath) -> Any:
    node = doc
    for part in path:
        node = node[part]
    return node


def _find(doc: Any, path: SlotPath) -> Any:
    try:
        return _get(doc, path)
    except (KeyError, TypeError):
        return None


def _set(doc: Any, path: SlotPath, value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
