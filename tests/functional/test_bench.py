"""The benchmarks stay runnable: each runs once on a tiny input and prints its JSON line.
(Timings are never asserted in tests; bench/README.md holds the measured figures.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"


def test_crypto_bench_runs_and_reports_every_column() -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(BENCH / "crypto.py"), "--mib", "1", "--rounds", "1",
         "--segment-sizes", "65536"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bench"] == "crypto"
    (row,) = report["rows"]
    assert row["segment_size"] == 65536
    for key in ("seal_vs_raw", "open_vs_raw", "seal_vs_esdk", "seal_vs_esdk_signed"):
        assert row[key] > 0
    assert "| 64 KiB |" in result.stdout
