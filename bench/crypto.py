"""Seal and open throughput of callvault's object format, against raw AES-GCM and the AWS
Encryption SDK, on the same bytes in the same run.

* raw AES-GCM: ``AESGCM.encrypt``/``decrypt`` of each segment with a counter nonce: no
  header, no framing, no key derivation. The floor any AES-GCM format pays.
* callvault: ``ObjectWriter`` fed segment-sized writes (as the gateway does), and
  ``ObjectReader`` fed 1 MiB reads (as the vault does), header and commitment included.
* AWS Encryption SDK v4 with the Material Providers Library's raw AES keyring, frame length
  = segment size, in two suites: ``esdk`` is the committing suite without signatures
  (AES_256_GCM_HKDF_SHA512_COMMIT_KEY), the closest equivalent of our format;
  ``esdk_signed`` is the SDK's default (the same plus an ECDSA P-384 message signature).

Each contestant runs ROUNDS times, one after another in every round. Throughput (MB/s) is
the best round's; a ratio is the median over rounds of the two contestants' time ratio in
the same round, which cancels most of a shared machine's drift. Prints two tables (seal,
open) and one JSON line. Goal (issue 2): seal >= 0.8x raw AES-GCM at 64 KiB segments, >= 10x the
AWS Encryption SDK.

    python bench/crypto.py [--mib 32] [--rounds 7] [--segment-sizes 16384,65536,1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from report import print_table  # noqa: E402

from crypto.objectformat import ObjectReader, ObjectWriter, generate_dek  # noqa: E402

READ_CHUNK = 1 << 20
Sink = Callable[[bytes | bytearray], object]


def discard(sealed: bytes | bytearray) -> None:
    """Where sealed bytes go in a seal run: handed off and dropped, as an upload does once
    they are written, so neither contestant pays for keeping 32 MiB of output alive."""


def raw_seal(aead: AESGCM, data: memoryview, segment: int, sink: Sink) -> None:
    for i, off in enumerate(range(0, len(data), segment)):
        sink(aead.encrypt(struct.pack(">4xQ", i), data[off : off + segment], None))


def raw_open(aead: AESGCM, sealed: list[bytes]) -> int:
    return sum(len(aead.decrypt(struct.pack(">4xQ", i), c, None)) for i, c in enumerate(sealed))


def format_seal(dek: bytes, data: memoryview, segment: int, sink: Sink) -> None:
    writer = ObjectWriter(
        dek=dek,
        tenant="acme",
        object_id="bench-object",
        kek_id="kek-bench",
        kek_version=1,
        segment_size=segment,
    )
    for off in range(0, len(data), segment):
        sink(writer.write(data[off : off + segment]))
    sink(writer.close())


def format_open(dek: bytes, sealed: bytes) -> int:
    reader = ObjectReader(dek=dek, tenant="acme", object_id="bench-object")
    view = memoryview(sealed)
    n = 0
    for off in range(0, len(view), READ_CHUNK):
        n += sum(len(p) for p in reader.feed(view[off : off + READ_CHUNK]))
    return n + sum(len(p) for p in reader.finish())


class Esdk:
    """The AWS Encryption SDK with a raw AES keyring (None when not installed)."""

    def __init__(self, key: bytes, frame_length: int, *, signed: bool) -> None:
        import aws_encryption_sdk
        from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
        from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
        from aws_cryptographic_material_providers.mpl.models import (
            AesWrappingAlg,
            CreateRawAesKeyringInput,
        )
        from aws_encryption_sdk.identifiers import AlgorithmSuite, CommitmentPolicy

        mpl = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
        self.keyring = mpl.create_raw_aes_keyring(
            input=CreateRawAesKeyringInput(
                key_namespace="callvault-bench",
                key_name="kek-bench",
                wrapping_key=key,
                wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
            )
        )
        self.client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        # Unsigned: the same guarantees as our format. Signed: the SDK's default suite,
        # which adds an ECDSA P-384 signature over the whole message.
        self.suite = (
            AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384
            if signed
            else AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
        )
        self.frame_length = frame_length

    def seal(self, data: bytes) -> bytes:
        sealed, _ = self.client.encrypt(
            source=data,
            keyring=self.keyring,
            algorithm=self.suite,
            frame_length=self.frame_length,
            encryption_context={"tenant": "acme", "object": "bench-object"},
        )
        return bytes(sealed)

    def open(self, sealed: bytes) -> int:
        plaintext, _ = self.client.decrypt(source=sealed, keyring=self.keyring)
        return len(plaintext)


def run_rounds(rounds: int, contestants: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Run the contestants one after another, ``rounds`` times; every time of each."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, run in contestants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def ratio(times: dict[str, list[float]], baseline: str, contestant: str) -> float:
    """How many times faster ``contestant`` is than ``baseline``: the median over rounds of
    the two's time ratio within a round (runs side by side share the machine's state)."""
    return statistics.median(b / c for b, c in zip(times[baseline], times[contestant], strict=True))


def bench_segment_size(
    data: bytes, segment: int, rounds: int, with_esdk: bool
) -> dict[str, float | int]:
    dek = generate_dek()
    aead = AESGCM(dek)
    view = memoryview(data)
    raw_sealed: list[bytes] = []
    raw_seal(aead, view, segment, raw_sealed.append)
    kept: list[bytes | bytearray] = []
    format_seal(dek, view, segment, kept.append)
    ours_sealed = b"".join(kept)
    assert format_open(dek, ours_sealed) == len(data)
    seal: dict[str, Callable[[], object]] = {
        "raw": lambda: raw_seal(aead, view, segment, discard),
        "callvault": lambda: format_seal(dek, view, segment, discard),
    }
    open_: dict[str, Callable[[], object]] = {
        "raw": lambda: raw_open(aead, raw_sealed),
        "callvault": lambda: format_open(dek, ours_sealed),
    }
    if with_esdk:
        for name, signed in (("esdk", False), ("esdk_signed", True)):
            esdk = Esdk(dek, segment, signed=signed)
            esdk_sealed = esdk.seal(data)
            assert esdk.open(esdk_sealed) == len(data)
            seal[name] = lambda esdk=esdk: esdk.seal(data)
            open_[name] = lambda esdk=esdk, sealed=esdk_sealed: esdk.open(sealed)
    mb = len(data) / 1e6
    seal_t = run_rounds(rounds, seal)
    open_t = run_rounds(rounds, open_)
    row: dict[str, float | int] = {"segment_size": segment}
    for name in seal:
        row[f"seal_{name}_mbps"] = round(mb / min(seal_t[name]), 1)
        row[f"open_{name}_mbps"] = round(mb / min(open_t[name]), 1)
    row["seal_vs_raw"] = round(ratio(seal_t, "raw", "callvault"), 3)
    row["open_vs_raw"] = round(ratio(open_t, "raw", "callvault"), 3)
    if with_esdk:
        for op, times in (("seal", seal_t), ("open", open_t)):
            for name in ("esdk", "esdk_signed"):
                row[f"{op}_vs_{name}"] = round(ratio(times, name, "callvault"), 1)
            # No AES-GCM format beats raw AES-GCM: the ceiling of the ratio to the SDK.
            row[f"{op}_raw_vs_esdk"] = round(ratio(times, "esdk", "raw"), 1)
    row["overhead_bytes"] = len(ours_sealed) - len(data)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="plaintext size in MiB")
    parser.add_argument("--rounds", type=int, default=11, help="rounds (median ratio, best MB/s)")
    parser.add_argument("--segment-sizes", default="16384,65536,1048576")
    args = parser.parse_args()

    try:
        import aws_cryptographic_material_providers  # noqa: F401

        with_esdk = True
    except ImportError:
        print("aws-encryption-sdk[MPL] not installed: skipping the ESDK column", file=sys.stderr)
        with_esdk = False

    data = os.urandom(args.mib << 20)
    rows = [
        bench_segment_size(data, int(s), args.rounds, with_esdk)
        for s in args.segment_sizes.split(",")
    ]

    print(
        f"# {args.mib} MiB random plaintext, {args.rounds} rounds (MB/s: best round; ratios: "
        "median of per-round ratios), "
        f"1 thread, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}"
    )
    names = ["raw", "callvault", "esdk", "esdk_signed"] if with_esdk else ["raw", "callvault"]
    for op in ("seal", "open"):
        head = ["segment"] + [f"{op} {n}" for n in names] + ["cv/raw"]
        if with_esdk:
            head += ["cv/esdk", "cv/esdk signed", "ceiling raw/esdk"]
        print(f"\n{op} (MB/s and ratios of throughput)")
        table: list[list[object]] = []
        for r in rows:
            cells: list[object] = [f"{int(r['segment_size']) // 1024} KiB"]
            cells += [r[f"{op}_{n}_mbps"] for n in names]
            cells.append(f"{r[f'{op}_vs_raw']}x")
            if with_esdk:
                cells += [f"{r[f'{op}_vs_esdk']}x", f"{r[f'{op}_vs_esdk_signed']}x"]
                cells.append(f"{r[f'{op}_raw_vs_esdk']}x")
            table.append(cells)
        print_table(head, table)
    print(json.dumps({"bench": "crypto", "mib": args.mib, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
