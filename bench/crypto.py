"""Seal and open throughput of callvault's object format, against raw AES-GCM and the AWS
Encryption SDK, on the same bytes in the same run.

* raw AES-GCM: ``AESGCM.encrypt``/``decrypt`` of each segment with a counter nonce: no
  header, no framing, no key derivation. The floor any AES-GCM format pays.
* callvault: ``ObjectWriter`` fed segment-sized writes (as the gateway does), and
  ``ObjectReader`` fed 1 MiB reads (as the vault does), header and commitment included.
* AWS Encryption SDK v4 with the Material Providers Library's raw AES keyring, the
  committing suite without signatures (AES_256_GCM_HKDF_SHA512_COMMIT_KEY), frame length =
  segment size: the closest managed equivalent of our format.

Each contestant runs ROUNDS times, alternating, and the best round counts. Prints a table
and one JSON line. Goal (issue 2): seal >= 0.8x raw AES-GCM at 64 KiB segments, >= 10x the
AWS Encryption SDK.

    python bench/crypto.py [--mib 32] [--rounds 7] [--segment-sizes 16384,65536,1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from crypto.objectformat import ObjectReader, ObjectWriter, generate_dek  # noqa: E402

READ_CHUNK = 1 << 20


def raw_seal(aead: AESGCM, data: memoryview, segment: int) -> list[bytes]:
    return [
        aead.encrypt(struct.pack(">4xQ", i), data[off : off + segment], None)
        for i, off in enumerate(range(0, len(data), segment))
    ]


def raw_open(aead: AESGCM, sealed: list[bytes]) -> int:
    return sum(len(aead.decrypt(struct.pack(">4xQ", i), c, None)) for i, c in enumerate(sealed))


def format_seal(dek: bytes, data: memoryview, segment: int) -> list[bytearray]:
    """Sealed pieces collected as the store would receive them (like ``raw_seal``)."""
    writer = ObjectWriter(
        dek=dek,
        tenant="acme",
        object_id="bench-object",
        kek_id="kek-bench",
        kek_version=1,
        segment_size=segment,
    )
    out = [writer.write(data[off : off + segment]) for off in range(0, len(data), segment)]
    out.append(writer.close())
    return out


def format_open(dek: bytes, sealed: bytes) -> int:
    reader = ObjectReader(dek=dek, tenant="acme", object_id="bench-object")
    view = memoryview(sealed)
    n = 0
    for off in range(0, len(view), READ_CHUNK):
        n += sum(len(p) for p in reader.feed(view[off : off + READ_CHUNK]))
    return n + sum(len(p) for p in reader.finish())


class Esdk:
    """The AWS Encryption SDK with a raw AES keyring (None when not installed)."""

    def __init__(self, key: bytes, frame_length: int) -> None:
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
        self.suite = AlgorithmSuite.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
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


def best_of(rounds: int, contestants: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Run the contestants alternately ``rounds`` times; the best time of each."""
    best = {name: float("inf") for name in contestants}
    for _ in range(rounds):
        for name, run in contestants.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def bench_segment_size(
    data: bytes, segment: int, rounds: int, with_esdk: bool
) -> dict[str, float | int]:
    dek = generate_dek()
    aead = AESGCM(dek)
    view = memoryview(data)
    raw_sealed = raw_seal(aead, view, segment)
    ours_sealed = b"".join(format_seal(dek, view, segment))
    assert format_open(dek, ours_sealed) == len(data)
    seal: dict[str, Callable[[], object]] = {
        "raw": lambda: raw_seal(aead, view, segment),
        "callvault": lambda: format_seal(dek, view, segment),
    }
    open_: dict[str, Callable[[], object]] = {
        "raw": lambda: raw_open(aead, raw_sealed),
        "callvault": lambda: format_open(dek, ours_sealed),
    }
    if with_esdk:
        esdk = Esdk(dek, segment)
        esdk_sealed = esdk.seal(data)
        assert esdk.open(esdk_sealed) == len(data)
        seal["esdk"] = lambda: esdk.seal(data)
        open_["esdk"] = lambda: esdk.open(esdk_sealed)
    mb = len(data) / 1e6
    seal_t = best_of(rounds, seal)
    open_t = best_of(rounds, open_)
    row: dict[str, float | int] = {"segment_size": segment}
    for name in seal:
        row[f"seal_{name}_mbps"] = round(mb / seal_t[name], 1)
        row[f"open_{name}_mbps"] = round(mb / open_t[name], 1)
    row["seal_vs_raw"] = round(seal_t["raw"] / seal_t["callvault"], 3)
    row["open_vs_raw"] = round(open_t["raw"] / open_t["callvault"], 3)
    if with_esdk:
        row["seal_vs_esdk"] = round(seal_t["esdk"] / seal_t["callvault"], 1)
        row["open_vs_esdk"] = round(open_t["esdk"] / open_t["callvault"], 1)
    row["overhead_bytes"] = len(ours_sealed) - len(data)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="plaintext size in MiB")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; best counts")
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
        f"# {args.mib} MiB random plaintext, best of {args.rounds} alternating rounds, "
        f"1 thread, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}"
    )
    head = ["segment", "seal raw", "seal cv", "seal esdk", "cv/raw", "cv/esdk"]
    head += ["open raw", "open cv", "open esdk", "cv/raw", "cv/esdk"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [
            f"{int(r['segment_size']) // 1024} KiB",
            f"{r['seal_raw_mbps']} MB/s",
            f"{r['seal_callvault_mbps']} MB/s",
            f"{r.get('seal_esdk_mbps', '-')} MB/s",
            f"{r['seal_vs_raw']}x",
            f"{r.get('seal_vs_esdk', '-')}x",
            f"{r['open_raw_mbps']} MB/s",
            f"{r['open_callvault_mbps']} MB/s",
            f"{r.get('open_esdk_mbps', '-')} MB/s",
            f"{r['open_vs_raw']}x",
            f"{r.get('open_vs_esdk', '-')}x",
        ]
        print("| " + " | ".join(cells) + " |")
    print(json.dumps({"bench": "crypto", "mib": args.mib, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
