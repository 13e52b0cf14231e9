"""The sealed object format: how every byte of audio, transcript and analysis sits at rest.

Anchored on Tink's AES-GCM-HKDF streaming AEAD and on the AWS Encryption SDK v2's key
commitment, and sans-I/O: the writer is fed plaintext and hands back sealed bytes, the
reader is fed sealed bytes and hands back verified plaintext. Neither touches a file or a
socket, so the gateway, the AI worker and the export path all drive the same code.

Layout (all integers big-endian)::

    header  = magic "CVLT" | version u8 = 1 | header_len u16 | suite u8 = 1
              | segment_size u32 | kek_version u32 | salt[32] | nonce_prefix[7]
              | tenant (u8 len + UTF-8) | object_id (u8 len + ASCII) | kek_id (u8 len + ASCII)
              | commitment[32]
    segment = plaintext_len u32 | AES-256-GCM(ciphertext | tag[16])
    object  = header | segment+          (the last segment is sealed with the last flag)

Why each part is there:

* The per-object keys come from HKDF-SHA256 over the object's DEK, with the object's salt,
  and with every header field but the commitment in HKDF's ``info``. Changing any header
  field therefore changes the keys: the header is authenticated without a separate MAC.
* The commitment (AWS ESDK v2) is a second HKDF output stored in the header and compared in
  constant time before any segment is decrypted, so one ciphertext can never open to two
  plaintexts under two keys, and a wrong DEK fails at the header, not at segment 0.
* A segment's nonce is ``nonce_prefix | segment index u32 | last flag u8`` (Tink), so
  reordered segments fail and an object cut at a segment boundary fails (its new final
  segment was sealed without the last flag). The length prefix is the segment's AAD.
* Segments may be shorter than ``segment_size``: the writer seals early on ``flush()``, which
  is how the gateway makes audio durable every couple of seconds.
* The wrapped DEK is not in the object; it lives only in the catalog's key table, so
  deleting one row there makes this object unreadable everywhere, backups included. The KEK
  id and version in the header record what sealed the DEK first; after rotation the key
  table is authoritative.

Only this module imports the AEAD primitive (STYLE.md section 6).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import DecryptionFailed

MAGIC = b"CVLT"
VERSION = 1
SUITE_AES256GCM_HKDF_SHA256_COMMIT = 1

DEK_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
COMMITMENT_SIZE = 32
TAG_SIZE = 16
SEGMENT_PREFIX_SIZE = 4
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_SEGMENTS = 2**32

MAX_TENANT_LEN = 64
MAX_OBJECT_ID_LEN = 128
MAX_KEK_ID_LEN = 128

_PREAMBLE = struct.Struct(">4sBH")  # magic, version, header_len
_FIXED = struct.Struct(f">BII{SALT_SIZE}s{NONCE_PREFIX_SIZE}s")  # suite..nonce_prefix
_U32 = struct.Struct(">I")
_NONCE_TAIL = struct.Struct(">IB")  # segment index, last flag
MIN_HEADER_SIZE = _PREAMBLE.size + _FIXED.size + 3 * 2 + COMMITMENT_SIZE
MAX_HEADER_SIZE = (
    _PREAMBLE.size
    + _FIXED.size
    + 3
    + MAX_TENANT_LEN
    + MAX_OBJECT_ID_LEN
    + MAX_KEK_ID_LEN
    + COMMITMENT_SIZE
)

_KEY_INFO = b"callvault/object/v1/segment-key"
_COMMIT_INFO = b"callvault/object/v1/commitment"


@dataclass(frozen=True)
class ObjectHeader:
    """The authenticated header of a sealed object."""

    tenant: str
    object_id: str
    kek_id: str
    kek_version: int
    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes = b""

    def body(self) -> bytes:
        """The header bytes without the commitment: what the keys are derived over."""
        tenant = self.tenant.encode("utf-8")
        object_id = self.object_id.encode("ascii")
        kek_id = self.kek_id.encode("ascii")
        header_len = (
            _PREAMBLE.size + _FIXED.size + 3 + len(tenant) + len(object_id) + len(kek_id)
        ) + COMMITMENT_SIZE
        return b"".join(
            (
                _PREAMBLE.pack(MAGIC, VERSION, header_len),
                _FIXED.pack(
                    SUITE_AES256GCM_HKDF_SHA256_COMMIT,
                    self.segment_size,
                    self.kek_version,
                    self.salt,
                    self.nonce_prefix,
                ),
                _short_field(tenant),
                _short_field(object_id),
                _short_field(kek_id),
            )
        )

    def to_bytes(self) -> bytes:
        return self.body() + self.commitment


def _short_field(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def _check_fields(
    tenant: str, object_id: str, kek_id: str, kek_version: int, segment_size: int
) -> None:
    """Reject header values the format cannot carry (a programming error, not bad input)."""
    if not 0 < len(tenant.encode("utf-8")) <= MAX_TENANT_LEN:
        raise ValueError(f"tenant must be 1..{MAX_TENANT_LEN} bytes of UTF-8")
    for name, value, limit in (
        ("object_id", object_id, MAX_OBJECT_ID_LEN),
        ("kek_id", kek_id, MAX_KEK_ID_LEN),
    ):
        if not (0 < len(value) <= limit and value.isascii()):
            raise ValueError(f"{name} must be 1..{limit} ASCII characters")
    if not 0 <= kek_version < 2**32:
        raise ValueError("kek_version must fit in 32 bits")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}")


def parse_header(data: bytes | bytearray | memoryview) -> tuple[ObjectHeader, int] | None:
    """Parse a header from the start of ``data``.

    Returns the header and its length, or ``None`` when more bytes are needed. Raises only
    ``DecryptionFailed`` (naming the header) for anything that is not a valid header.
    """
    view = memoryview(data)
    if len(view) < _PREAMBLE.size:
        if bytes(view[: len(MAGIC)]) != MAGIC[: len(view)]:
            raise DecryptionFailed("not a callvault object (bad magic)")
        return None
    magic, version, header_len = _PREAMBLE.unpack_from(view)
    if magic != MAGIC:
        raise DecryptionFailed("not a callvault object (bad magic)")
    if version != VERSION:
        raise DecryptionFailed(f"unsupported format version {version}")
    if not MIN_HEADER_SIZE <= header_len <= MAX_HEADER_SIZE:
        raise DecryptionFailed(f"header length {header_len} out of range")
    if len(view) < header_len:
        return None
    suite, segment_size, kek_version, salt, nonce_prefix = _FIXED.unpack_from(view, _PREAMBLE.size)
    if suite != SUITE_AES256GCM_HKDF_SHA256_COMMIT:
        raise DecryptionFailed(f"unsupported cipher suite {suite}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise DecryptionFailed(f"segment size {segment_size} out of range")
    offset = _PREAMBLE.size + _FIXED.size
    fields: list[str] = []
    for name, limit, encoding in (
        ("tenant", MAX_TENANT_LEN, "utf-8"),
        ("object id", MAX_OBJECT_ID_LEN, "ascii"),
        ("KEK id", MAX_KEK_ID_LEN, "ascii"),
    ):
        if offset >= header_len - COMMITMENT_SIZE:
            raise DecryptionFailed(f"header ends inside the {name}")
        length = view[offset]
        offset += 1
        if not 0 < length <= limit or offset + length > header_len - COMMITMENT_SIZE:
            raise DecryptionFailed(f"bad {name} length {length}")
        try:
            fields.append(bytes(view[offset : offset + length]).decode(encoding))
        except UnicodeDecodeError:
            raise DecryptionFailed(f"{name} is not valid {encoding}") from None
        offset += length
    if offset + COMMITMENT_SIZE != header_len:
        raise DecryptionFailed("header length does not match its fields")
    header = ObjectHeader(
        tenant=fields[0],
        object_id=fields[1],
        kek_id=fields[2],
        kek_version=kek_version,
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        commitment=bytes(view[offset:header_len]),
    )
    return header, header_len


def _derive(dek: bytes, header: ObjectHeader) -> tuple[AESGCM, bytes]:
    """The segment cipher and the commitment of one object, both bound to its header."""
    if len(dek) != DEK_SIZE:
        raise ValueError("a DEK is 32 bytes")
    body = header.body()

    def expand(info: bytes) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=info + body)
        return hkdf.derive(dek)

    return AESGCM(expand(_KEY_INFO)), expand(_COMMIT_INFO)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + _NONCE_TAIL.pack(index, last)


def generate_dek() -> bytes:
    """A fresh random data-encryption key for one object."""
    return os.urandom(DEK_SIZE)


class ObjectWriter:
    """Seals one object as a stream: append plaintext as it arrives, get sealed bytes back.

    ``write()`` seals each full segment as soon as it fills; ``flush()`` seals what is
    buffered as a (short) segment so that it can be made durable; ``close()`` seals the
    last segment. Each call returns the sealed bytes to append to the object; the first
    call's start with the header, so a store holds it as soon as the object exists. The
    writer never buffers more than one segment.
    """

    def __init__(
        self,
        *,
        dek: bytes,
        tenant: str,
        object_id: str,
        kek_id: str,
        kek_version: int,
        segment_size: int = 64 * 1024,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        _check_fields(tenant, object_id, kek_id, kek_version, segment_size)
        unsigned = ObjectHeader(
            tenant=tenant,
            object_id=object_id,
            kek_id=kek_id,
            kek_version=kek_version,
            segment_size=segment_size,
            salt=random(SALT_SIZE),
            nonce_prefix=random(NONCE_PREFIX_SIZE),
        )
        self._aead, commitment = _derive(dek, unsigned)
        self.header = replace(unsigned, commitment=commitment)
        self._pending_header: bytes | None = self.header.to_bytes()
        self._nonce_prefix = self.header.nonce_prefix
        self._segment_size = segment_size
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        self.plaintext_bytes = 0
        self.sealed_bytes = 0

    @classmethod
    def resume(cls, *, dek: bytes, header: ObjectHeader, segments: int) -> ObjectWriter:
        """Continue an object whose header and first ``segments`` segments are already
        written (recovery after a crash, from the verified prefix ``ObjectReader.salvage``
        found): same header, same keys, no header emitted again, the next segment numbered
        ``segments``. The DEK must match the header's commitment."""
        if not 0 <= segments < MAX_SEGMENTS:
            raise ValueError("segments out of range")
        stored = iter((header.salt, header.nonce_prefix))
        writer = cls(
            dek=dek,
            tenant=header.tenant,
            object_id=header.object_id,
            kek_id=header.kek_id,
            kek_version=header.kek_version,
            segment_size=header.segment_size,
            random=lambda size: next(stored),
        )
        if not hmac.compare_digest(writer.header.commitment, header.commitment):
            raise DecryptionFailed("key commitment mismatch: wrong key or altered header")
        writer._pending_header = None
        writer._index = segments
        return writer

    @property
    def segments_sealed(self) -> int:
        return self._index

    def write(self, data: bytes | bytearray | memoryview) -> bytearray:
        """Append plaintext; return the sealed bytes of every segment that filled up."""
        self._check_open()
        view = memoryview(data)
        if view.format != "B":
            view = view.cast("B")  # e.g. int16 samples: count and slice bytes
        self.plaintext_bytes += len(view)
        out: list[bytearray] = []
        size = self._segment_size
        if self._buffer:
            take = min(size - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == size:
                out.append(self._seal(self._buffer, last=False))
                self._buffer = bytearray()
        while len(view) >= size:
            out.append(self._seal(view[:size], last=False))
            view = view[size:]
        if len(view):
            self._buffer += view
        return self._emit(out)

    def flush(self) -> bytearray:
        """Seal buffered plaintext now as a short segment (nothing if the buffer is empty)."""
        self._check_open()
        if not self._buffer:
            return self._emit([])
        sealed = self._seal(self._buffer, last=False)
        self._buffer = bytearray()
        return self._emit([sealed])

    def close(self) -> bytearray:
        """Seal the last segment (possibly empty) and finish the object."""
        self._check_open()
        sealed = self._seal(self._buffer, last=True)
        self._buffer = bytearray()
        self._closed = True
        return self._emit([sealed])

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the object is already closed")

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> bytearray:
        if self._index >= MAX_SEGMENTS:
            raise ValueError("too many segments for one object")
        length = len(plaintext)
        record = bytearray(SEGMENT_PREFIX_SIZE + length + TAG_SIZE)
        _U32.pack_into(record, 0, length)
        view = memoryview(record)
        self._aead.encrypt_into(
            _nonce(self._nonce_prefix, self._index, last),
            plaintext,
            view[:SEGMENT_PREFIX_SIZE],  # the length prefix is the segment's AAD
            view[SEGMENT_PREFIX_SIZE:],
        )
        self._index += 1
        return record

    def _emit(self, records: list[bytearray]) -> bytearray:
        if self._pending_header is None and len(records) == 1:  # the common case
            self.sealed_bytes += len(records[0])
            return records[0]
        if self._pending_header is not None:
            records.insert(0, bytearray(self._pending_header))
            self._pending_header = None
        out = records[0] if len(records) == 1 else bytearray().join(records)
        self.sealed_bytes += len(out)
        return out


class ObjectReader:
    """Opens one sealed object as a stream: feed sealed bytes, get verified plaintext back.

    A segment's plaintext is released only after its tag verifies. Whether a segment is the
    last one is known only once the next byte (or the end) is seen, so the last segment is
    released by ``finish()``, which also fails if the object was cut short. With
    ``verify_all`` nothing at all is released until the whole object has verified (exports).

    ``tenant`` and ``object_id`` are what the caller expects to open; a header naming any
    other fails, so an object copied under another tenant's or object's name never opens.

    Records are decrypted in place from the bytes fed; only an incomplete record at the end
    of a chunk is copied and kept for the next one, so the reader holds at most one segment.
    """

    def __init__(
        self, *, dek: bytes, tenant: str, object_id: str, verify_all: bool = False
    ) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError("a DEK is 32 bytes")
        self._dek = dek
        self._tenant = tenant
        self._object_id = object_id
        self._verify_all = verify_all
        self._pending = bytearray()  # the incomplete tail of what was fed so far
        self._opened: tuple[AESGCM, ObjectHeader] | None = None
        self._index = 0
        self._done = False
        self._failed = False
        self._held: list[bytes] = []
        self._verified_bytes = 0
        self.complete = False
        """Whether the object's last segment was seen (set by ``finish`` and ``salvage``)."""

    @property
    def verified_bytes(self) -> int:
        """How many leading bytes of the object (header and segments) have verified."""
        return self._verified_bytes

    @property
    def header(self) -> ObjectHeader | None:
        """The verified header, once enough bytes were fed."""
        return None if self._opened is None else self._opened[1]

    @property
    def segments_opened(self) -> int:
        return self._index

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take more sealed bytes; return the plaintext of segments verified so far."""
        self._check_usable()
        if self._done:
            if len(data):
                raise DecryptionFailed("data after the last segment", segment=self._index)
            return []
        view = memoryview(data).cast("B")
        out: list[bytes] = []
        with self._failing():
            pos = self._complete_pending(view, out)
            if not self._pending:
                if self._opened is None:
                    pos += self._open_header(view[pos:])
                if self._opened is not None:
                    aead, header = self._opened
                    while (end := self._record_end(view, pos, header, final=False)) is not None:
                        out.append(self._open_segment(aead, header, view[pos:end], last=False))
                        pos = end
                self._pending = bytearray(view[pos:])
        return self._release(out)

    def _complete_pending(self, view: memoryview, out: list[bytes]) -> int:
        """Finish the header or record left incomplete by the last chunk with just the
        bytes of ``view`` it needs (not the whole chunk), and open it; return how much of
        ``view`` was used. A complete record is opened only once a byte follows it."""
        pos = 0
        while self._pending and pos < len(view):
            want = self._unit_size(self._pending)
            if len(self._pending) < want:
                take = min(want - len(self._pending), len(view) - pos)
                self._pending += view[pos : pos + take]
                pos += take
                continue
            pending = memoryview(self._pending)
            if self._opened is None:
                self._open_header(pending)
            else:
                aead, header = self._opened
                out.append(self._open_segment(aead, header, pending, last=False))
            self._pending = bytearray()
        return pos

    def _unit_size(self, buf: bytearray) -> int:
        """The size of the header or record starting ``buf``, or of the prefix that tells
        it (the preamble, a length field) while fewer bytes are there."""
        if self._opened is None:
            parsed = parse_header(buf)  # raises on a bad preamble
            if parsed is not None:
                return parsed[1]
            if len(buf) < _PREAMBLE.size:
                return _PREAMBLE.size
            header_len: int = _PREAMBLE.unpack_from(buf)[2]
            return header_len
        size = self._record_size(memoryview(buf), 0, self._opened[1])
        return SEGMENT_PREFIX_SIZE if size is None else size

    def finish(self) -> list[bytes]:
        """Signal the end of the object; return the last plaintext, or fail if truncated."""
        self._check_usable()
        if self._done:
            return []
        view = memoryview(self._pending)
        with self._failing():
            pos = self._open_header(view) if self._opened is None else 0
            if self._opened is None:
                raise DecryptionFailed("object ends inside the header")
            aead, header = self._opened
            end = self._record_end(view, pos, header, final=True)
            if end is None:
                raise DecryptionFailed(
                    "object is truncated: its last segment is missing", segment=self._index
                )
            # feed() opened every record that had bytes after it, so this one is the end.
            out = [self._open_segment(aead, header, view[pos:end], last=True)]
        self._done = True
        self.complete = True
        self._pending = bytearray()
        released = self._held + out if self._verify_all else out
        self._held = []
        return released

    def salvage(self) -> list[bytes]:
        """End an object whose writer may never have closed it (the process died while
        writing): open the complete records still held, and drop an incomplete record at
        the end, which is what a crash in the middle of a write leaves. Returns their
        plaintext; ``complete`` tells whether the last segment was among them, and
        ``verified_bytes`` where the intact prefix ends (``ObjectWriter.resume`` continues
        it there).

        Only for recovering the gateway's own spool: a truncated object opens here, so a
        stored object must be read with ``finish()``, which refuses truncation."""
        self._check_usable()
        if self._done:
            return []
        view = memoryview(self._pending)
        out: list[bytes] = []
        with self._failing():
            pos = self._open_header(view) if self._opened is None else 0
            if self._opened is not None:
                aead, header = self._opened
                while (size := self._record_size(view, pos, header)) is not None:
                    if len(view) - pos < size:
                        break  # torn write
                    record = view[pos : pos + size]
                    if pos + size < len(view):
                        out.append(self._open_segment(aead, header, record, last=False))
                    else:
                        out.append(self._open_final(aead, header, record))
                    pos += size
        self._done = True
        self._pending = bytearray()
        released = self._held + out if self._verify_all else out
        self._held = []
        return released

    def _open_final(self, aead: AESGCM, header: ObjectHeader, record: memoryview) -> bytes:
        """The last complete record of a salvaged object: the closing segment if the writer
        got to close it, else an ordinary one."""
        try:
            plaintext = self._open_segment(aead, header, record, last=True)
        except DecryptionFailed:
            return self._open_segment(aead, header, record, last=False)
        self.complete = True
        return plaintext

    def _check_usable(self) -> None:
        if self._failed:
            raise DecryptionFailed("the object already failed to verify", segment=self._index)

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """Mark the reader unusable once anything failed, so no later segment is released."""
        try:
            yield
        except DecryptionFailed:
            self._failed = True
            self._pending = bytearray()
            self._held = []
            raise

    def _open_header(self, view: memoryview) -> int:
        """Verify the header at the start of ``view``; return its length (0: incomplete)."""
        parsed = parse_header(view)
        if parsed is None:
            return 0
        header, length = parsed
        if header.tenant != self._tenant:
            raise DecryptionFailed("object belongs to another tenant")
        if header.object_id != self._object_id:
            raise DecryptionFailed("object was sealed under another object id")
        aead, commitment = _derive(self._dek, header)
        if not hmac.compare_digest(commitment, header.commitment):
            raise DecryptionFailed("key commitment mismatch: wrong key or altered header")
        self._opened = (aead, header)
        self._verified_bytes += length
        return length

    def _record_end(
        self, view: memoryview, pos: int, header: ObjectHeader, *, final: bool
    ) -> int | None:
        """Where the segment record at ``pos`` ends, if it is complete. Before the end of
        the object (``final=False``) a record counts only if a byte follows it, since only
        then is it known not to be the last."""
        available = len(view) - pos
        size = self._record_size(view, pos, header)
        if size is None or available < size:
            if final and available:
                raise DecryptionFailed("object ends inside a segment", segment=self._index)
            return None
        if available == size and not final:
            return None
        return pos + size

    def _record_size(self, view: memoryview, pos: int, header: ObjectHeader) -> int | None:
        """The size of the record at ``pos`` from its length field (None: not all there);
        a length beyond the segment size fails before anything is read or buffered."""
        if len(view) - pos < SEGMENT_PREFIX_SIZE:
            return None
        (length,) = _U32.unpack_from(view, pos)
        if length > header.segment_size:
            raise DecryptionFailed(
                f"segment length {length} exceeds the segment size", segment=self._index
            )
        return SEGMENT_PREFIX_SIZE + length + TAG_SIZE

    def _open_segment(
        self, aead: AESGCM, header: ObjectHeader, record: memoryview, *, last: bool
    ) -> bytes:
        if self._index >= MAX_SEGMENTS:
            raise DecryptionFailed("too many segments", segment=self._index)
        nonce = _nonce(header.nonce_prefix, self._index, last)
        try:
            plaintext = aead.decrypt(
                nonce, record[SEGMENT_PREFIX_SIZE:], record[:SEGMENT_PREFIX_SIZE]
            )
        except InvalidTag:
            reason = "authentication failed (corrupt, reordered, truncated or foreign segment)"
            raise DecryptionFailed(reason, segment=self._index) from None
        self._index += 1
        self._verified_bytes += len(record)
        return plaintext

    def _release(self, plaintext: list[bytes]) -> list[bytes]:
        if self._verify_all:
            self._held.extend(plaintext)
            return []
        return plaintext


def seal(
    plaintext: bytes,
    *,
    dek: bytes,
    tenant: str,
    object_id: str,
    kek_id: str,
    kek_version: int,
    segment_size: int = 64 * 1024,
) -> bytes:
    """Seal a whole (small) object at once, e.g. a transcript."""
    writer = ObjectWriter(
        dek=dek,
        tenant=tenant,
        object_id=object_id,
        kek_id=kek_id,
        kek_version=kek_version,
        segment_size=segment_size,
    )
    return bytes(writer.write(plaintext) + writer.close())


def open_sealed(
    chunks: Iterable[bytes] | bytes, *, dek: bytes, tenant: str, object_id: str
) -> bytes:
    """Open a whole object at once; nothing is returned unless every segment verifies."""
    reader = ObjectReader(dek=dek, tenant=tenant, object_id=object_id, verify_all=True)
    for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
        reader.feed(chunk)
    return b"".join(reader.finish())


# --- key wrapping -------------------------------------------------------------------------
# DEKs are wrapped under a tenant's KEK and KEKs under the master key with the same AEAD,
# here so that this stays the only module touching the primitive. The context (tenant,
# object id, KEK version) is the AAD: a wrapped key copied into another row never unwraps.

_WRAP_VERSION = 1
_WRAP_NONCE_SIZE = 12
WRAPPED_KEY_SIZE = 1 + _WRAP_NONCE_SIZE + DEK_SIZE + TAG_SIZE


def wrap_key(kek: bytes, key: bytes, *, context: bytes) -> bytes:
    """Encrypt a 32-byte key under a 32-byte key-encryption key, bound to ``context``."""
    if len(kek) != DEK_SIZE or len(key) != DEK_SIZE:
        raise ValueError("keys are 32 bytes")
    nonce = os.urandom(_WRAP_NONCE_SIZE)
    return bytes((_WRAP_VERSION,)) + nonce + AESGCM(kek).encrypt(nonce, key, context)


def unwrap_key(kek: bytes, wrapped: bytes, *, context: bytes) -> bytes:
    """Reverse ``wrap_key``; raise ``DecryptionFailed`` if the key or context is wrong."""
    if len(wrapped) != WRAPPED_KEY_SIZE or wrapped[0] != _WRAP_VERSION:
        raise DecryptionFailed("wrapped key is malformed")
    nonce = wrapped[1 : 1 + _WRAP_NONCE_SIZE]
    try:
        return AESGCM(kek).decrypt(nonce, wrapped[1 + _WRAP_NONCE_SIZE :], context)
    except InvalidTag:
        raise DecryptionFailed("wrapped key does not open under this key and context") from None
