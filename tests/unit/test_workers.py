"""What ``serve`` hands its AI worker children (gateway.workers): its own settings, secrets
included, whatever the child's environment says, and never on a command line."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from pydantic import ValidationError

from gateway.settings import Settings
from gateway.workers import ChildMetrics, settings_from_payload, settings_payload


def test_a_child_gets_serves_settings_whatever_its_own_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        data_dir=tmp_path / "flagged",  # as `--data-dir` gives it: not in the environment
        master_key="bWFzdGVyLWtleS1vZi10aGUtdGVzdC0zMi1ieXRlcyE=",
        operator_token="an-operator-token-for-the-payload-test-0123",
        store={"url": "s3://bucket", "access_key": "AKIA-TEST", "secret_key": "s3-secret"},
        ai={"workers": 2, "lease": "PT3S", "model": "tiny.en"},
        audiosocket={"allow_networks": ["10.0.0.0/8"]},
    )
    payload = settings_payload(settings)
    assert b"s3-secret" in payload  # in clear: the child needs them (over a pipe, not argv)
    monkeypatch.setenv("CALLVAULT_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("CALLVAULT_AI__LEASE", "PT99S")
    monkeypatch.setenv("CALLVAULT_STORE__SECRET_KEY", "not-this-one")
    child = settings_from_payload(payload)
    assert child == settings
    assert child.data_dir == tmp_path / "flagged"
    assert child.store.secret_key is not None
    assert child.store.secret_key.get_secret_value() == "s3-secret"
    assert child.master_key is not None
    assert child.master_key.get_secret_value() == "bWFzdGVyLWtleS1vZi10aGUtdGVzdC0zMi1ieXRlcyE="


def test_dead_childrens_metrics_are_archived_into_a_bounded_number_of_files(
    tmp_path: Path,
) -> None:
    """A restart storm: each dead child's metric files are folded into the archive and
    removed, and the counters still add up every child's counts."""
    children = ChildMetrics(tmp_path)
    jobs = mmap_key("callvault_ai_jobs", "callvault_ai_jobs_total", ["outcome"], ["done"], "Jobs")
    other = mmap_key("callvault_store_ops", "callvault_store_ops_total", [], [], "Not ours")
    busy = mmap_key("callvault_ai_busy", "callvault_ai_busy", [], [], "A gauge")

    def child(pid: int) -> None:  # what a worker child leaves behind
        for name, key in (("counter", jobs), ("counter", other), ("gauge_all", busy)):
            values = MmapedDict(str(tmp_path / f"{name}_{pid}.db"))
            values.write_value(key, 2.0 if name == "counter" else 1.0, 0.0)
            values.close()

    def jobs_done() -> float:
        [metric] = [m for m in children.collect() if m.name == "callvault_ai_jobs"]
        return sum(s.value for s in metric.samples if s.name.endswith("_total"))

    for pid in range(1000, 1030):
        child(pid)
        children.archive(pid)
    child(2000)  # a living child
    assert jobs_done() == 2.0 * 31
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_2000.db",
        "counter_archive.db",
        "gauge_all_2000.db",
    ]
    assert {m.name for m in children.collect()} == {"callvault_ai_jobs", "callvault_ai_busy"}


@pytest.mark.parametrize(
    "bad",
    [
        {"http": {"tls_cert": "/etc/cert.pem"}},  # a section's own check (no key with it)
        {"store": {"url": "s3://bucket", "secret_key": "s3-secret", "part_size": "big"}},
        {"master_key": ["s3-secret"]},
    ],
)
def test_a_settings_error_names_the_field_never_its_secrets(bad: dict[str, object]) -> None:
    """A child that cannot read its settings logs the error: it must not carry them."""
    payload = {
        "store": {"url": "s3://bucket", "access_key": "AKIA-TEST", "secret_key": "s3-secret"},
        "master_key": "bWFzdGVyLWtleS1vZi10aGUtdGVzdC0zMi1ieXRlcyE=",
        "operator_token": "an-operator-token-for-the-payload-test-0123",
        **bad,
    }
    with pytest.raises(ValidationError) as caught:
        settings_from_payload(orjson.dumps(payload))
    text = str(caught.value)
    for secret in ("s3-secret", "AKIA-TEST", "bWFzdGVyLWtleS", "an-operator-token"):
        assert secret not in text
    assert next(iter(bad)) in text


@pytest.mark.parametrize("failing", ["write", "fsync", "replace", "unlink"])
def test_a_failure_part_way_through_archiving_never_counts_a_child_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The disk fills, or a file cannot be replaced or removed, while a dead child's
    values are archived: the archive is as it was and the child's file is counted where it
    is (or, once the archive holds it, the child's file is out of the scrape's sight):
    never both. (Before: the values added so far stayed in the archive beside the child's
    file, counted twice for good.)"""
    import gateway.workers

    children = ChildMetrics(tmp_path)
    keys = [
        mmap_key("callvault_ai_jobs", "callvault_ai_jobs_total", ["outcome"], [o], "Jobs")
        for o in ("done", "failed", "retried")
    ]

    def child(pid: int) -> None:
        values = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        for key in keys:
            values.write_value(key, 2.0, 0.0)
        values.close()

    def jobs() -> float:
        [metric] = [m for m in children.collect() if m.name == "callvault_ai_jobs"]
        return sum(s.value for s in metric.samples if s.name.endswith("_total"))

    child(1000)
    children.archive(1000)
    child(1001)
    assert jobs() == 12.0
    if failing == "write":  # the disk fills on the second sum written
        write = MmapedDict.write_value
        sums: list[str] = []

        def full(self: MmapedDict, key: str, value: float, timestamp: float) -> None:
            if value == 4.0:
                sums.append(key)
                if len(sums) == 2:
                    raise OSError(28, "No space left on device")
            write(self, key, value, timestamp)

        monkeypatch.setattr(MmapedDict, "write_value", full)
    elif failing == "unlink":  # the child's file, once archived, cannot be removed
        unlink = Path.unlink

        def fails_on_the_childs(self: Path, missing_ok: bool = False) -> None:
            if "1001" in self.name:
                raise OSError(5, "scripted unlink failure")
            unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", fails_on_the_childs)
    else:

        def fails(*args: object) -> None:
            raise OSError(5, f"scripted {failing} failure")

        monkeypatch.setattr(gateway.workers.os, failing, fails)
    with pytest.raises(OSError):
        children.archive(1001)
    monkeypatch.undo()
    assert jobs() == 12.0
    assert not list(tmp_path.glob("*.new"))
