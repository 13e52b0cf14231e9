"""Key administration: the ``callvault keys`` commands, and what ``serve`` and ``worker``
say at start about the master key.

The commands run beside live ``serve`` and ``worker`` processes on the same data dir; the
keyring's file lock and atomic replaces keep them consistent, and ``admin_lock`` keeps two
key commands from interleaving. What each one promises:

* ``keys rotate --tenant T``: a new KEK version for T, every DEK of T re-wrapped under it
  (``MediaVault.rotate_tenant_keys``), audited ``keys.rotated``;
* ``keys retire [--tenant T]``: the KEK versions that are not current and that no DEK
  references removed from the keyring (``MediaVault.retire_unused_keks``), audited
  ``keys.retired``; refused with ``CALLVAULT_KEYS__PROVIDER=vault``, whose versions are
  retired in OpenBao/Vault (``crypto.vaultkeys``);
* ``keys rotate-master``: the keyring re-wrapped under a new master key, crash-safe (the
  old key opens it until the new one is committed). With the key in the data dir's file
  it is one command (``crypto.masterkey.KeyFileRotation``); with ``CALLVAULT_MASTER_KEY``
  it is two: phase one takes the new key, the operator moves it into the secret store
  and restarts the processes, ``--commit`` drops the old wraps. The master key belongs to
  no tenant, so its rotation is recorded as a log line (logger ``callvault.keys``), not in
  a tenant's audit chain. With the keyring in the catalog (``CALLVAULT_KEYS__PROVIDER=
  catalog``, and ``vault`` on a PostgreSQL catalog: ``keyring_in_catalog``) the keyring is
  the catalog's row and the key comes from ``CALLVAULT_MASTER_KEY`` only, never the data
  dir's file: the two-step rotation, with every node restarted in between;
* ``keys to-catalog``: the data dir's local keyring merged into the catalog keyring, for a
  node that moves to it (``gateway.catalogkeys``, ``crypto.keymerge``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from crypto import keyfile
from crypto.errors import CallvaultError, ConfigError, KeyUnavailable
from crypto.keyfile import NEW, OLD, Side
from crypto.keys import KEYRING_FILE, MASTER_KEY_FILE, LocalKeyring, admin_lock
from crypto.masterkey import (
    OLD_KEY_FILE,
    KeyFileRotation,
    decode_master_key,
    generate_master_key,
    read_key_file,
    write_key_file,
)
from gateway.catalogkeys import (
    PROVIDER_SETTING,
    CopyReport,
    copy_to_catalog,
    fleet_master_key,
    keyring_in_catalog,
    local_keyring_left,
    require_shared_catalog,
)
from gateway.settings import Settings
from storage.keyring import CatalogBacking

log = logging.getLogger("callvault.keys")

_NEXT_STEPS = """\
Next:
  1. put the new key in your secret store as CALLVAULT_MASTER_KEY;
  2. restart every `callvault serve` and `callvault worker` with it (until step 3, the
     processes still running with the old key go on working);
  3. run `callvault keys rotate-master --commit` with CALLVAULT_MASTER_KEY set to the new
     key. From then on the old key opens nothing."""


def add_key_commands(commands: Any) -> None:
    """The ``keys`` command and its actions, on the CLI's subcommand parser."""
    keys = commands.add_parser("keys", help="manage the master key and tenants' KEKs")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate", help="add a KEK version and re-wrap every DEK of the tenant"
    )
    rotate.add_argument("--tenant", required=True, help="tenant id")
    retire = actions.add_parser(
        "retire",
        help="remove the KEK versions that are not current and that no object uses "
        "(after `keys rotate`)",
    )
    retire.add_argument("--tenant", help="tenant id (default: every tenant)")
    master = actions.add_parser(
        "rotate-master",
        help="re-wrap the keyring under a new master key (the old one works until commit)",
        description="With the master key in the data dir's file: makes a new key, re-wraps "
        "the keyring and puts the new key in the file, in one go. With CALLVAULT_MASTER_KEY: "
        "phase one takes the new key (--new-key-file or --generate-new-key) and leaves the "
        "keyring open to both keys; --commit, once every process runs with the new key, "
        "drops the old one.",
    )
    source = master.add_mutually_exclusive_group()
    source.add_argument(
        "--new-key-file",
        type=Path,
        metavar="FILE",
        help="a file (mode 0600) holding the new key's base64, or - for standard input",
    )
    source.add_argument(
        "--generate-new-key",
        type=Path,
        metavar="FILE",
        help="make a random new key and write it to FILE (mode 0600; never over a file)",
    )
    master.add_argument(
        "--old-key-file",
        type=Path,
        metavar="FILE",
        help="the old key (mode 0600), when CALLVAULT_MASTER_KEY is already the new one and "
        "processes with the old key added keys since phase one",
    )
    actions.add_parser(
        "to-catalog",
        help="merge this data dir's local keyring into the catalog keyring, for "
        "CALLVAULT_KEYS__PROVIDER=catalog (or vault on PostgreSQL; needs CALLVAULT_MASTER_KEY)",
        description="Merges keyring.json into the catalog's keyring row (every value stays "
        "wrapped by CALLVAULT_MASTER_KEY; into an empty row it goes as it is; with "
        "provider vault, its audit keys and signing key only) and checks that every value "
        "opens from there. Refused, changing nothing, when a key cannot be merged (a tenant "
        "with another KEK or audit key in the catalog keyring: it names them) or a "
        "master-key rotation is in progress; a second run changes nothing.",
    )
    finish = master.add_mutually_exclusive_group()
    finish.add_argument(
        "--commit", action="store_true", help="drop the old key's wraps: the new key only"
    )
    finish.add_argument(
        "--abort", action="store_true", help="drop the new key's wraps: back to the old key"
    )


def run_key_command(settings: Settings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with admin_lock(settings.data_dir):
        if args.keys_command == "rotate":
            return asyncio.run(_rotate(settings, args.tenant))
        if args.keys_command == "retire":
            return asyncio.run(_retire(settings, args.tenant))
        if args.keys_command == "to-catalog":
            return _to_catalog(settings)
        if keyring_in_catalog(settings):
            fleet_master_key(settings)  # the catalog keyring's key is never the data dir's file
        if settings.master_key is None:
            return _rotate_master_file(settings, args)
        return _rotate_master_env(settings, args)


async def _rotate(settings: Settings, tenant: str) -> int:
    from gateway.services import open_services

    async with open_services(settings) as services:
        report = await services.vault.rotate_tenant_keys(tenant, actor="cli", now=datetime.now(UTC))
    print(
        f"tenant {tenant}: KEK {report.kek_id} is now at version {report.kek_version}; "
        f"{report.rewrapped} DEK(s) re-wrapped, no object rewritten; "
        f"`callvault keys retire --tenant {tenant}` removes the versions no DEK uses now"
    )
    return 0


async def _retire(settings: Settings, tenant: str | None) -> int:
    from gateway.services import open_services

    if settings.keys.provider == "vault":
        # crypto.vaultkeys says why: transit forgets only the versions below a threshold,
        # and for good (trim), which the retirement's put-back cannot be built on.
        raise ConfigError(
            "CALLVAULT_KEYS__PROVIDER",
            "is vault: the KEK versions are transit key versions, retired in OpenBao/Vault "
            "itself once `callvault keys rotate` re-wrapped every DEK: set the key's "
            "min_decryption_version and min_encryption_version to its latest version, then "
            "trim it (README, section 'Key custody with OpenBao/Vault')",
        )

    async with open_services(settings) as services:
        if tenant is None:
            tenants = [t.id for t in await services.catalog.tenants.list()]
        else:
            tenants = [tenant]
        if not tenants:
            print("no tenants, nothing to retire")
        for name in tenants:
            result = await services.vault.retire_unused_keks(
                name, actor="cli", now=datetime.now(UTC)
            )
            if result is None:
                print(f"tenant {name}: no keys yet, nothing to retire")
                continue
            kept = ", ".join(map(str, result.kept))
            if result.retired:
                gone = ", ".join(map(str, result.retired))
                print(
                    f"tenant {name}: KEK {result.kek_id} version(s) {gone} retired "
                    f"(no DEK used them); version(s) kept: {kept}"
                )
            else:
                print(f"tenant {name}: nothing to retire; KEK {result.kek_id} keeps {kept}")
    return 0


def _rotate_master_file(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.data_dir / MASTER_KEY_FILE
    for flag, given in (
        ("--new-key-file", args.new_key_file),
        ("--generate-new-key", args.generate_new_key),
        ("--old-key-file", args.old_key_file),
        ("--abort", args.abort),
    ):
        if given:
            raise ConfigError(
                flag,
                f"the master key is the file {path}: `keys rotate-master` makes the new key "
                "and puts it there itself (and finishes an interrupted rotation when run "
                "again). To bring your own key, move the key to CALLVAULT_MASTER_KEY first.",
            )
    report = KeyFileRotation(settings.data_dir).run()
    if report.resumed and report.values == 0:
        print("callvault: the interrupted master-key rotation was already committed; cleaned up")
        return 0
    _record_rotation(
        f"keyring {settings.data_dir / KEYRING_FILE}",
        "committed; the master key file holds the new key",
        report.values,
    )
    print(
        f"master key rotated{' (an interrupted rotation, finished)' if report.resumed else ''}: "
        f"the keyring's {report.values} value(s) are wrapped under a new key, now in {path}; "
        "the old key opens nothing. Running serve and worker processes read the new key "
        "from that file on their next use of the keyring."
    )
    return 0


def _rotate_master_env(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.services import open_keyring

    keyring = open_keyring(settings)  # CALLVAULT_MASTER_KEY must open one side
    try:
        return _rotate_master_on(keyring, args)
    finally:
        keyring.close()


def _rotate_master_on(keyring: LocalKeyring, args: argparse.Namespace) -> int:
    """The two-step rotation on the keyring ``CALLVAULT_MASTER_KEY`` opens (a file in the
    data dir, or the catalog's row)."""
    new = _new_key(args)
    old = (
        read_key_file(args.old_key_file, source=f"--old-key-file {args.old_key_file}")
        if args.old_key_file
        else None
    )
    if args.abort:
        count = _finish(keyring, OLD, new if keyring.rotation_side == OLD else old)
        _record_rotation(keyring.location, "abandoned; the old key stays", count)
        print(f"master-key rotation abandoned: the keyring's {count} value(s) open with the "
              "old key only")  # fmt: skip
        return 0
    if keyring.rotation_side is None:
        if new is None and args.commit:
            raise ConfigError("--commit", "no master-key rotation is in progress")
        if new is None:
            raise ConfigError(
                "--new-key-file",
                "no master-key rotation is in progress; starting one needs the new key: "
                "--new-key-file FILE (- for standard input) or --generate-new-key FILE",
            )
        count = keyring.begin_master_rotation(new, new_source=_new_source(args))
    elif keyring.rotation_side == OLD and new is not None:  # complete values added since
        count = keyring.begin_master_rotation(new, new_source=_new_source(args))
    else:
        count = 0
    if args.commit:
        count = _finish(keyring, NEW, new if keyring.rotation_side == OLD else old)
        _record_rotation(keyring.location, "committed; CALLVAULT_MASTER_KEY is the new key", count)
        print(
            f"master-key rotation committed: the keyring's {count} value(s) open with the new "
            "key only. A process still running with the old key fails at its next use of the "
            "keyring: restart it with the new CALLVAULT_MASTER_KEY."
        )
        return 0
    side = keyring.rotation_side
    if count:
        print(
            f"master-key rotation, phase one done: the keyring's {count} value(s) open with "
            "the old and with the new key."
        )
    else:
        held = "new" if side == NEW else "old"
        print(f"a master-key rotation is in progress; CALLVAULT_MASTER_KEY is its {held} key.")
    print(_NEXT_STEPS)
    return 0


def _finish(keyring: LocalKeyring, keep: Side, other: bytes | None) -> int:
    flag = "--new-key-file" if keyring.rotation_side == OLD else "--old-key-file"
    try:
        return keyring.finish_master_rotation(keep, other, other_source=flag)
    except KeyUnavailable as e:
        raise ConfigError(flag, f"{e.message}: give it with {flag}") from None


def _new_key(args: argparse.Namespace) -> bytes | None:
    """The new master key the operator gave, or made now; never printed."""
    if args.generate_new_key is not None:
        key = generate_master_key()
        try:
            write_key_file(args.generate_new_key, key, exclusive=True)
        except FileExistsError:
            raise ConfigError(
                "--generate-new-key",
                f"{args.generate_new_key} exists; a key file is never overwritten",
            ) from None
        print(
            f"the new master key is in {args.generate_new_key} (mode 0600): put it in your "
            "secret store, then delete the file"
        )
        return key
    if args.new_key_file is None:
        return None
    if str(args.new_key_file) == "-":
        return decode_master_key(sys.stdin.readline(), source="--new-key-file (standard input)")
    return read_key_file(args.new_key_file, source=_new_source(args))


def _new_source(args: argparse.Namespace) -> str:
    given = args.generate_new_key or args.new_key_file
    return f"--new-key-file {given}" if args.new_key_file else f"--generate-new-key {given}"


def _to_catalog(settings: Settings) -> int:
    report = copy_to_catalog(settings)
    local = settings.data_dir / KEYRING_FILE
    if not report.copied:
        done = "was already in"
    elif report.merged:
        done = f"was merged into ({len(report.added)} key(s) added)"
    else:
        done = "was copied into"
    print(
        f"the local keyring {local} {done} the {report.location}; its {report.values} "
        "value(s) open there with CALLVAULT_MASTER_KEY, and it holds every key of the file "
        "that the provider needs."
    )
    for added in report.added:
        print(f"  added: {added}")
    print(_to_catalog_next(settings, report, local))
    return 0


def _to_catalog_next(settings: Settings, report: CopyReport, local: Path) -> str:
    """What the operator does after ``keys to-catalog``, per provider."""
    stop = (
        "this node's should be stopped while the keyring is merged: a process still on the "
        "local keyring makes keys the catalog never sees"
    )
    if settings.keys.provider == "vault":
        first = (
            f"  1. keep {PROVIDER_SETTING}=vault and set the same CALLVAULT_DATABASE_URL "
            "(PostgreSQL) and the same CALLVAULT_MASTER_KEY (from your secret store) on "
            "every node, and restart every `callvault serve` and `callvault worker` (" + stop + ");"
        )
        if report.kek_tenants_left:
            return (
                "Next:\n" + first + f"\n  2. {local} also holds the KEKs of "
                f"{report.kek_tenants_left} tenant(s) of the local provider, which vault "
                "never uses and which were not copied: it is their only copy. Delete it (and "
                "keep it out of backups) once nothing sealed under them is needed: until "
                "then a tenant deleted is not crypto-shredded in that file."
            )
    else:
        first = (
            f"  1. set {PROVIDER_SETTING}=catalog, the same CALLVAULT_DATABASE_URL and the "
            "same CALLVAULT_MASTER_KEY (from your secret store) on every node, and restart "
            "every `callvault serve` and `callvault worker` (" + stop + ");"
        )
    return (
        "Next:\n" + first + f"\n  2. then delete {local} (and keep it out of backups): "
        "the catalog keyring holds every key of it now, and the file still holds every KEK "
        "it held, so a tenant deleted from now on is not crypto-shredded in that copy."
    )


def _record_rotation(location: str, outcome: str, values: int) -> None:
    """The master key belongs to no tenant: its rotation is a log line, not an audit event."""
    log.info(
        "master-key rotation of %s %s (%d value(s))",
        location,
        outcome,
        values,
        extra={"event": "keys.master_rotated", "values": values},
    )


# --- start-time warnings ----------------------------------------------------------------


def warn_about_master_key(settings: Settings) -> None:
    """What ``serve`` and ``worker`` say at start about the master key: that it sits next
    to what it protects when it is the data dir's file (or a key file was left there after
    the key moved to ``CALLVAULT_MASTER_KEY``) and the gateway faces a network, and that a
    master-key rotation was left unfinished. No secret is in any."""
    path = settings.data_dir / MASTER_KEY_FILE
    host = settings.http.host
    if settings.master_key is not None and not settings.http.loopback:
        for left in (path, settings.data_dir / OLD_KEY_FILE):
            if left.exists():
                log.warning(
                    "the master key file %s was left in the data dir, though the key comes "
                    "from CALLVAULT_MASTER_KEY, and CALLVAULT_HTTP__HOST (%s) is not a "
                    "loopback address: a stolen copy of the data dir or of its backups holds "
                    "that key (the current one, or an old one that opens old copies of the "
                    "keyring) beside what it protects. Delete it (and keep it out of "
                    "backups); if it held the key in use, rotate the key (README, section "
                    "Keys).",
                    left,
                    host,
                    extra={"event": "keys.master_key_file_left"},
                )
    if settings.master_key is None and not settings.http.loopback:
        log.warning(
            "the master key is the file %s, inside the data dir, and CALLVAULT_HTTP__HOST "
            "(%s) is not a loopback address: a stolen copy of the data dir or of its "
            "backups holds the key beside everything it protects. Move it to a secret store: "
            "set CALLVAULT_MASTER_KEY to the file's content from there, restart, delete the "
            "file, then rotate the key (`callvault keys rotate-master --generate-new-key "
            "FILE`; README, section Keys).",
            path,
            host,
            extra={"event": "keys.master_key_in_data_dir"},
        )
    catalog = keyring_in_catalog(settings)
    where, unfinished = (
        _catalog_rotation_unfinished(settings)
        if catalog
        else (settings.data_dir / KEYRING_FILE, _rotation_unfinished(settings.data_dir))
    )
    if unfinished:
        how = "`callvault keys rotate-master`" + (
            " --commit" if settings.master_key is not None else ""
        )
        log.warning(
            "a master-key rotation of %s is unfinished: the keyring opens with the old and "
            "the new key until it is; finish it with %s",
            where,
            how,
            extra={"event": "keys.master_rotation_unfinished"},
        )
    if catalog:
        _warn_about_local_keyring(settings)


def _warn_about_local_keyring(settings: Settings) -> None:
    """A ``keyring.json`` left beside the catalog keyring: "delete it" only once the
    catalog keyring is checked to hold every key of it; else what to do first."""
    left = local_keyring_left(settings)
    if left is None:
        return
    path = settings.data_dir / KEYRING_FILE
    provider = settings.keys.provider
    if left.merge is None or not left.merge.complete:
        why = (
            f"it could not be compared with the catalog keyring ({left.reason})"
            if left.merge is None
            else "it holds keys the catalog keyring does not "
            f"({len(left.merge.missing) + len(left.merge.conflicts)})"
        )
        log.warning(
            "the local keyring %s is in the data dir, though the keys are in the catalog "
            "(CALLVAULT_KEYS__PROVIDER=%s), and %s: do not delete it, it may be their only "
            "copy. Run `callvault keys to-catalog` on this node: it merges them into the "
            "catalog keyring, or says why it cannot.",
            path,
            provider,
            why,
            extra={"event": "keys.local_keyring_not_in_catalog"},
        )
        return
    if provider == "vault" and left.kek_tenants:
        log.warning(
            "the local keyring %s is left in the data dir; the catalog keyring holds its "
            "audit keys and signing key, but it also holds the KEKs of %d tenant(s) of the "
            "local provider, which vault never uses (their only copy): delete it once "
            "nothing sealed under them is needed; until then a tenant deleted is not "
            "crypto-shredded in it, nor in backups of the data dir.",
            path,
            left.kek_tenants,
            extra={"event": "keys.local_keyring_left"},
        )
        return
    log.warning(
        "the local keyring %s is left in the data dir, though the keys are in the catalog "
        "(CALLVAULT_KEYS__PROVIDER=%s), which holds every key of it (checked now): it "
        "still holds every KEK it held, so a tenant deleted since is not crypto-shredded in "
        "it, nor in backups of the data dir. Delete it.",
        path,
        provider,
        extra={"event": "keys.local_keyring_left"},
    )


def _catalog_rotation_unfinished(settings: Settings) -> tuple[str, bool]:
    """Where the catalog keyring is, and whether its row is in a master-key rotation (read
    as it is, with no key: whether the start opens it is the start's business); not in
    progress when it cannot be read (the start refuses right after)."""
    try:
        require_shared_catalog(settings)
        backing = CatalogBacking.open(settings.catalog_url, settings.data_dir)
    except CallvaultError:
        return "the catalog keyring", False
    try:
        loaded = backing.read()
    except CallvaultError:
        return backing.name, False
    finally:
        backing.close()
    try:
        doc = orjson.loads(loaded.document) if loaded is not None else None
    except orjson.JSONDecodeError:
        return backing.name, False
    return backing.name, isinstance(doc, dict) and keyfile.in_rotation(doc)


def _rotation_unfinished(data_dir: Path) -> bool:
    if (data_dir / OLD_KEY_FILE).exists():
        return True
    try:
        doc = orjson.loads((data_dir / KEYRING_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(doc, dict) and keyfile.in_rotation(doc)
