"""Run fuzz targets for a while, each in its own process, and report what they did.

``python -m tests.fuzz.run [--seconds N] [--jobs J] [--out DIR] [TARGET...]`` (all targets
when none is named) prints one line per target (executions, atheris's coverage counters
``cov`` and ``ft``, the corpus size, the outcome) and then one JSON line; it exits 1 if any
target crashed. Under ``DIR``: ``corpus/<target>`` (what the fuzzer learned, reused by the
next run; the checked-in seeds in ``tests/fuzz/corpus`` are only read), ``crashes/<target>``
(libFuzzer's ``crash-``, ``timeout-`` and ``oom-`` inputs) and ``logs/<target>.log``.

A crash is reproduced with ``python -m tests.fuzz <target> <crash file>``; once fixed, its
input goes to ``tests/fuzz/regressions/<target>/`` (replayed by ``tests/fuzz/test_fuzz.py``)
and a plain test next to the parser's others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "tests" / "fuzz" / "corpus"
DICTS = ROOT / "tests" / "fuzz" / "dicts"
"""libFuzzer dictionaries (tokens for its mutations) of the targets that read text."""
INPUT_TIMEOUT_S = 10
"""libFuzzer's per-input limit: an input that runs longer is a hang, saved as ``timeout-``."""
RSS_LIMIT_MB = 2048
"""libFuzzer's memory limit: an input that takes more is saved as ``oom-``."""
_STATS = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)")
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
GRACE_S = 30
"""Seconds a run may take past its ``seconds`` (start-up, an input running at the end,
up to ``INPUT_TIMEOUT_S``) before its process group is killed: well under the 120 s
pytest gives ``tests/fuzz/test_fuzz.py``'s test, so a hung child fails that test with its
log, not pytest's timeout without it."""


@dataclass(frozen=True)
class Outcome:
    """What one target's run did."""

    target: str
    seconds: int
    returncode: int
    executions: int
    coverage: int
    """atheris's ``cov``: Python branch and comparison counters reached."""
    features: int
    """libFuzzer's ``ft``: distinct (counter, hit-count bucket) features."""
    corpus: int
    crash: str | None
    """The saved crashing input, if any."""
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.crash is None and self.executions > 0

    def line(self) -> str:
        result = "ok" if self.ok else f"FAILED (exit {self.returncode}, crash {self.crash})"
        return (
            f"{self.target:13} {self.seconds:5d} s {self.executions:10d} runs"
            f"  cov {self.coverage:5d}  ft {self.features:6d}  corpus {self.corpus:5d}  {result}"
        )


def command(target: str, seconds: int, out: Path) -> list[str]:
    corpus, crashes = out / "corpus" / target, out / "crashes" / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    return [
        *(sys.executable, "-m", "tests.fuzz", target, str(corpus), str(SEEDS / target)),
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *([f"-dict={words}"] if (words := DICTS / f"{target}.dict").exists() else []),
    ]


def fuzz(target: str, *, seconds: int, out: Path, timeout_s: float | None = None) -> Outcome:
    """Fuzz ``target`` for ``seconds`` in a child process (atheris owns its process), in
    a process group of its own: killed whole if it has not exited ``timeout_s`` (default
    ``seconds + GRACE_S``) later, and reported as failed with its log."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_path = out / "logs" / f"{target}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    limit = seconds + GRACE_S if timeout_s is None else timeout_s
    with log_path.open("w") as log:
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command(target, seconds, out),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # atheris's own children too
            child.wait()
            returncode = -signal.SIGKILL
            log.write(f"\ntests.fuzz.run: no exit within {limit:g} s, process group killed\n")
    text = log_path.read_text(errors="replace")
    stats = _STATS.findall(text)
    cov, ft, corp = map(int, stats[-1]) if stats else (0, 0, 0)
    executed = _EXECUTED.search(text)
    crashes = sorted(
        p for p in (out / "crashes" / target).iterdir() if p.name.startswith(_ARTIFACTS)
    )
    return Outcome(
        target=target,
        seconds=seconds,
        returncode=returncode,
        executions=int(executed[1]) if executed else 0,
        coverage=cov,
        features=ft,
        corpus=corp,
        crash=str(crashes[0]) if crashes else None,
        log=str(log_path),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[])
    parser.add_argument("--seconds", type=int, default=300, help="per target (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="targets run at once (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / ".fuzz", help="default .fuzz")
    args = parser.parse_args()
    targets = args.targets or list(TARGETS)
    outcomes = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(fuzz, t, seconds=args.seconds, out=args.out.resolve()) for t in targets
        ]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            print(outcome.line(), flush=True)
    print(json.dumps({"bench": "fuzz", "targets": [asdict(o) for o in outcomes]}))
    for outcome in outcomes:
        if not outcome.ok:
            print(
                f"{outcome.target}: see {outcome.log}; reproduce with "
                f"python -m tests.fuzz {outcome.target} {outcome.crash}",
                file=sys.stderr,
            )
    sys.exit(0 if all(o.ok for o in outcomes) else 1)


if __name__ == "__main__":
    main()
