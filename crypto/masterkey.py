"""The master key: where it comes from, and rotating the one kept in the data dir.

The master key wraps the keyring, which wraps every tenant's KEKs: whoever holds it and a
copy of the keyring holds every key. It comes either from ``CALLVAULT_MASTER_KEY`` (a
secret store), or from a 0600 file ``master.key`` created in the data dir on first start;
the file is convenient, but sits next to what it protects, in every backup of the data dir.

``KeyFileRotation`` replaces the file's key with a new one and re-wraps the keyring under
it, in steps that each leave a data dir that every process can open, whatever key it
holds at that moment (``crypto.keyfile`` explains the two sides of the keyring during a
rotation). Run again after a crash between any two steps, it finishes the rotation. The
same rotation with a key from a secret store is ``LocalKeyring.begin_master_rotation``
then ``finish_master_rotation``, with the operator moving the key in between (the CLI,
``gateway.keyadmin``).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from crypto import keyfile
from crypto.errors import ConfigError
from crypto.keyfile import NEW, OLD
from crypto.keys import MASTER_KEY_FILE, MASTER_KEY_SETTING, LocalKeyring
from crypto.objectformat import DEK_SIZE

NEXT_KEY_FILE = MASTER_KEY_FILE + ".next"
"""The new key of a rotation in progress, until it replaces ``master.key``."""
OLD_KEY_FILE = MASTER_KEY_FILE + ".old"
"""The old key of a rotation in progress, from just before the new one replaces
``master.key`` until the keyring no longer holds wraps under it."""


def decode_master_key(value: str, *, source: str = MASTER_KEY_SETTING) -> bytes:
    """Decode a base64 master key, or refuse with a sentence naming ``source``."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(source, "is not valid base64; it must encode exactly 32 bytes") from None
    if len(key) != DEK_SIZE:
        raise ConfigError(
            source, f"must be the base64 encoding of exactly 32 bytes, not {len(key)} bytes"
        )
    return key


def load_master_key(value: str | None, data_dir: Path) -> bytes:
    """The master key from the setting, else from (or into) a 0600 file in the data dir.

    The file is created on first start with a fresh random key. An existing file that
    others can read is refused: the master key unlocks every tenant's keys.
    """
    if value is not None:
        return decode_master_key(value)
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            write_key_file(path, secrets.token_bytes(DEK_SIZE), exclusive=True)
        except FileExistsError:
            pass  # another process created it first; read theirs below
    return read_key_file(path)


def master_key_source(path: Path) -> str:
    """How errors name a master key kept in the file ``path``."""
    return f"master key file {path}"


def read_key_file(path: Path, *, source: str | None = None) -> bytes:
    """A key from a file holding its base64; refused if others may read the file.
    ``source`` names it in errors (default: the master key file)."""
    source = source or master_key_source(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                source, f"has mode {mode:o}; it must be readable by its owner only (600)"
            )
        return decode_master_key(path.read_text(), source=source)
    except FileNotFoundError:
        raise ConfigError(source, "does not exist") from None


def write_key_file(path: Path, key: bytes, *, exclusive: bool) -> None:
    """Write a key's base64 to a 0600 file, durably. ``exclusive``: never over an existing
    file (``FileExistsError``); otherwise replace it atomically."""
    encoded = base64.b64encode(key) + b"\n"
    if not exclusive:
        keyfile.write_file(path, encoded)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encoded)
        f.flush()
        os.fsync(f.fileno())
    keyfile.sync_dir(path.parent)


def generate_master_key() -> bytes:
    """A fresh random master key."""
    return secrets.token_bytes(DEK_SIZE)


@dataclass(frozen=True)
class FileRotationReport:
    values: int
    """How many values of the keyring are now wrapped under the new key."""
    resumed: bool
    """Whether it finished a rotation that had been interrupted."""


class KeyFileRotation:
    """Rotates the master key kept in ``<data dir>/master.key``.

    The steps, in order, each one durable before the next starts:

    1. ``write_next``: a new random key into ``master.key.next``;
    2. ``add_new_side``: the keyring wrapped under both keys (either opens it);
    3. ``keep_old_copy``: the old key into ``master.key.old``;
    4. ``install_next``: ``master.key.next`` renamed over ``master.key``;
    5. ``drop_old_side``: the keyring wrapped under the new key only, values that processes
       running with the old key added since step 2 re-wrapped (needs the old key);
    6. ``remove_old_copy``: ``master.key.old`` deleted.

    Until step 5 the old key opens the keyring; from step 2 on the new one does. A process
    running with the old key reads ``master.key`` again when the keyring stops opening
    with it (``LocalKeyring``'s ``reload_master``), so ``serve`` and ``worker`` go on.
    ``run`` looks at the files to see which steps were done, and does the rest.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.key_path = data_dir / MASTER_KEY_FILE
        self.next_path = data_dir / NEXT_KEY_FILE
        self.old_path = data_dir / OLD_KEY_FILE
        self.source = master_key_source(self.key_path)

    def open_keyring(self) -> LocalKeyring:
        """The keyring, opened with the key ``master.key`` holds now."""
        key = read_key_file(self.key_path)
        return LocalKeyring.open(
            self.data_dir,
            key,
            source=self.source,
            reload_master=lambda: read_key_file(self.key_path),
        )

    def run(self) -> FileRotationReport:
        """Rotate, or finish the rotation a crash interrupted."""
        old = read_key_file(self.key_path)
        keyring = self.open_keyring()
        side = keyring.rotation_side
        if side is None and self.old_path.exists():  # done but for the last step
            self.remove_old_copy()
            return FileRotationReport(values=0, resumed=True)
        resumed = side is not None
        new: bytes | None = None
        if side == OLD:
            new = self._pending_new_key(keyring)
            if new is None:  # its new key never reached master.key, and is lost: start over
                keyring.finish_master_rotation(OLD)
        if side == NEW:  # master.key already holds the new key
            count = self.drop_old_side(keyring, self._old_copy())
        else:
            if new is None:
                new = self.write_next()
                self.add_new_side(keyring, new)
            self.keep_old_copy(old)
            self.install_next()
            count = self.drop_old_side(keyring, new)
        self.remove_old_copy()
        return FileRotationReport(values=count, resumed=resumed)

    # -- the steps ----------------------------------------------------------------------------

    def write_next(self) -> bytes:
        key = generate_master_key()
        write_key_file(self.next_path, key, exclusive=False)
        return key

    def add_new_side(self, keyring: LocalKeyring, new: bytes) -> None:
        keyring.begin_master_rotation(new, new_source=master_key_source(self.next_path))

    def keep_old_copy(self, old: bytes) -> None:
        write_key_file(self.old_path, old, exclusive=False)

    def install_next(self) -> None:
        os.replace(self.next_path, self.key_path)
        keyfile.sync_dir(self.data_dir)

    def drop_old_side(self, keyring: LocalKeyring, other: bytes | None) -> int:
        """``other``: the key this keyring does not hold (the new one if it runs with the
        old, the old one if it runs with the new), to re-wrap values that lack a side."""
        return keyring.finish_master_rotation(
            NEW, other, other_source=master_key_source(self.old_path)
        )

    def remove_old_copy(self) -> None:
        self.old_path.unlink(missing_ok=True)
        keyfile.sync_dir(self.data_dir)

    def _pending_new_key(self, keyring: LocalKeyring) -> bytes | None:
        """The new key of the rotation in progress, from ``master.key.next``; ``None`` if
        that file is gone or holds another key. Completes the keyring's new side."""
        if not self.next_path.exists():
            return None
        try:
            new = read_key_file(self.next_path, source=master_key_source(self.next_path))
            self.add_new_side(keyring, new)
        except ConfigError:
            return None
        return new

    def _old_copy(self) -> bytes | None:
        if not self.old_path.exists():
            return None
        return read_key_file(self.old_path, source=master_key_source(self.old_path))
