"""Every fuzz target, in CI: its seeds and past crash inputs replayed, then atheris for a
bounded time.

The replay runs in this process (``fuzz_one`` needs no atheris): each checked-in seed and
each input under ``tests/fuzz/regressions/<target>/`` (inputs that once crashed a parser or
a harness) must keep the contract. The fuzzing runs each target in its own process
(atheris owns its process) for ``CI_SECONDS``, two at a time; a crash, a hang (an input
over ``tests.fuzz.run.INPUT_TIMEOUT_S``) or an input over ``RSS_LIMIT_MB`` fails the test
with the input and the traceback; a run that does not exit ``GRACE_S`` after its time is
killed (its process group) and fails the test with its log. Longer runs: ``make fuzz``.
"""

from __future__ import annotations

import base64
import importlib
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import tests.fuzz.run
from tests.fuzz.run import SEEDS, Outcome, fuzz
from tests.fuzz.targets import TARGETS

pytestmark = pytest.mark.timeout(120)

CI_SECONDS = 4
"""Seconds of fuzzing per target in CI (plus about two of start-up): the eight targets take
about half a minute on two cores."""
JOBS = 2
REGRESSIONS = Path(__file__).parent / "regressions"


def inputs(target: str) -> list[Path]:
    return sorted(
        path
        for folder in (SEEDS / target, REGRESSIONS / target)
        if folder.is_dir()
        for path in folder.iterdir()
    )


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_and_past_crashes_keep_the_contract(target: str) -> None:
    harness = importlib.import_module(f"tests.fuzz.{target}")
    found = inputs(target)
    assert len(found) >= 3, f"{target} has too few seeds ({len(found)})"
    for path in found:
        try:
            harness.fuzz_one(path.read_bytes())
        except Exception as e:
            raise AssertionError(
                f"{path.relative_to(SEEDS.parent)} breaks the contract: {e!r}"
            ) from e


@pytest.fixture(scope="module")
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """The selected targets' runs, started at once (two at a time) so that they overlap."""
    selected = [
        str(item.callspec.params["target"])
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_fuzzing_finds_no_crash"
    ]
    out = tmp_path_factory.mktemp("fuzz")
    pool = ThreadPoolExecutor(max_workers=JOBS)
    try:
        yield {t: pool.submit(fuzz, t, seconds=CI_SECONDS, out=out) for t in selected}
    finally:  # a test that failed or was interrupted: the runs not started are not waited for
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzing_finds_no_crash(target: str, fuzzed: dict[str, Future[Outcome]]) -> None:
    outcome = fuzzed[target].result()
    log = Path(outcome.log).read_text(errors="replace")
    if outcome.ok:
        return
    shown = ""
    if outcome.crash is not None:
        data = Path(outcome.crash).read_bytes()
        shown = f"the input (base64, {len(data)} bytes): {base64.b64encode(data[:4096]).decode()}\n"
    raise AssertionError(
        f"fuzzing {target} ({TARGETS[target]}) failed after {outcome.executions} runs, "
        f"exit {outcome.returncode}:\n{shown}"
        f"reproduce: python -m tests.fuzz {target} {outcome.crash}\n"
        f"...{log[-6000:]}"
    )


def test_a_hung_run_is_killed_with_its_children_and_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "fuzzer" that prints, starts a child of its own, and never exits: the run is
    # reported failed (not raised), with its log, and its whole process group is gone.
    pid_file = tmp_path / "grandchild"
    hang = (
        "import subprocess, sys, time\n"
        "print('fuzzing started', flush=True)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    real = tests.fuzz.run.command

    def command(target: str, seconds: int, out: Path) -> list[str]:
        real(target, seconds, out)  # its folders
        return [sys.executable, "-c", hang]

    monkeypatch.setattr(tests.fuzz.run, "command", command)
    target = next(iter(TARGETS))
    # 8 s: room for a loaded runner to start the fake fuzzer and its child
    outcome = fuzz(target, seconds=1, out=tmp_path, timeout_s=8)
    assert not outcome.ok and outcome.returncode < 0
    log = Path(outcome.log).read_text()
    assert "fuzzing started" in log and "no exit within 8 s, process group killed" in log
    grandchild = int(pid_file.read_text())
    for _ in range(100):  # reaped by init once its parent is gone
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        status = Path(f"/proc/{grandchild}/stat")
        if status.exists() and status.read_text().split(") ")[-1].startswith("Z"):
            break  # killed, not yet reaped
        time.sleep(0.05)
    else:
        raise AssertionError(f"process {grandchild} of the hung run still runs")
