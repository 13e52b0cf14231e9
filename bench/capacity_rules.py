"""What a capacity step is judged by, and how the search for the most calls goes: pure code
(no processes, no clock), so that ``tests/unit/test_capacity.py`` checks it with made-up
scrapes and fake steps. ``bench/capacity.py`` runs the steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LAG_LIMIT_S = 0.05
FLUSH_INTERVAL_S = 2.0
"""callvault's ``ingest.flush_interval`` (its default, left as it is)."""
DURABLE_LIMIT_S = FLUSH_INTERVAL_S + 0.5
SEND_LAG_LIMIT_MS = 20.0
CONFIRM_TRIES = 2
"""Confirmations per search: the best, and where that fails, the next best once."""


# --- histograms from Prometheus text -------------------------------------------------------

Buckets = tuple[tuple[float, float], ...]
"""A histogram as ``(le, cumulative count)`` pairs, ascending, ``+Inf`` last."""


def parse_histograms(text: str, names: Iterable[str]) -> dict[str, Buckets]:
    """The histograms ``names`` in Prometheus ``text``, each summed over its other labels."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = set(names)
    found: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        counts = found.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name == f"{family.name}_bucket":
                le = float(sample.labels["le"])
                counts[le] = counts.get(le, 0.0) + sample.value
    return {name: tuple(sorted(counts.items())) for name, counts in found.items()}


def sample_total(text: str, name: str) -> float:
    """The sum of the samples ``name`` (a counter's ``..._total``, a gauge) over their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def bucket_delta(before: Buckets, after: Buckets) -> Buckets:
    """What was observed between two scrapes of one histogram (``before`` may be empty: the
    histogram was not there yet)."""
    earlier = dict(before)
    return tuple((le, count - earlier.get(le, 0.0)) for le, count in after)


def quantile(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile of a histogram, interpolated linearly inside its bucket as
    Prometheus's ``histogram_quantile`` does; ``None`` with no observations, ``math.inf``
    when it lies past the highest finite bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > below:
            if math.isinf(le):
                return math.inf
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return math.inf


# --- verdicts and the search ---------------------------------------------------------------


def judge(
    loadgen: Mapping[str, Any],
    lag_p99_s: float | None,
    durable_p99_s: float | None,
    *,
    callvault: bool,
) -> tuple[str, list[str]]:
    """A step's verdict (``pass``, ``fail`` or ``loadgen-bound``) and the reasons for it."""
    # Over the steady window, where the contestant is judged, when the loadgen reports it.
    send_lag = loadgen.get("send_lag_ms_p99_steady") or loadgen.get("send_lag_ms_p99")
    if send_lag is not None and send_lag > SEND_LAG_LIMIT_MS:
        return "loadgen-bound", [
            f"loadgen send lag p99 {send_lag:.0f} ms > {SEND_LAG_LIMIT_MS:.0f}"
        ]
    why: list[str] = []
    if "error" in loadgen:
        why.append(str(loadgen["error"]))
    if loadgen.get("frames_lost"):
        why.append(f"{loadgen['frames_lost']} frames lost")
    if loadgen.get("calls_failed"):
        why.append(f"{loadgen['calls_failed']} calls failed")
    if lag_p99_s is None:
        why.append("no loop lag measured in the steady window")
    elif lag_p99_s >= LAG_LIMIT_S:
        why.append(f"loop lag p99 {ms(lag_p99_s)} ms >= {LAG_LIMIT_S * 1e3:.0f}")
    if callvault and durable_p99_s is None:
        why.append("no flush in the steady window")
    elif callvault and durable_p99_s is not None and durable_p99_s >= DURABLE_LIMIT_S:
        why.append(f"ingest-to-durable p99 {ms(durable_p99_s)} ms >= {DURABLE_LIMIT_S * 1e3:.0f}")
    return ("fail" if why else "pass"), why


@dataclass
class Search:
    """The largest N that passes: x ``growth`` from ``start`` until a step does not pass (or
    down by it until one does, when the first does not), bisected until the lowest N that
    did not pass is within ``precision`` of the best that did, then the best run once more
    to confirm it; a best that fails its confirmation counts as a failure, and the next
    best is bisected to and confirmed (``CONFIRM_TRIES`` confirmations at most)."""

    start: int
    growth: float = 1.5
    precision: float = 0.05
    most: int = 2000
    passes: set[int] = field(default_factory=set)
    fails: set[int] = field(default_factory=set)
    confirmed: dict[int, bool] = field(default_factory=dict)
    history: list[tuple[int, str]] = field(default_factory=list)

    @property
    def best(self) -> int:
        """The most calls that passed and were not refuted by a confirmation (0: none)."""
        return max((n for n in self.passes if n not in self.fails), default=0)

    @property
    def lowest_fail(self) -> int | None:
        return min(self.fails, default=None)

    def _closed(self) -> bool:
        fail, best = self.lowest_fail, self.best
        if fail is None:
            return best >= self.most
        return fail - best <= max(1, best * self.precision)

    def next(self) -> int | None:
        """The N of the next step, or ``None`` when the search is done."""
        if not self.history:
            return min(self.start, self.most)
        best, fail = self.best, self.lowest_fail
        if not self._closed():
            if fail is None:
                return min(self.most, max(best + 1, math.ceil(best * self.growth)))
            if best == 0:
                lower = min(fail - 1, math.floor(fail / self.growth))
                return lower if lower >= 1 else None
            return (best + fail) // 2
        if best == 0 or best in self.confirmed or len(self.confirmed) >= CONFIRM_TRIES:
            return None
        return best

    def record(self, calls: int, verdict: str) -> None:
        """The verdict of a step of ``calls`` (``pass``, ``fail``, ``loadgen-bound``)."""
        confirming = calls in self.passes and self._closed() and calls == self.best
        self.history.append((calls, verdict))
        if confirming:
            self.confirmed[calls] = verdict == "pass"
        if verdict == "pass":
            self.passes.add(calls)
        else:
            self.fails.add(calls)

    def result(self) -> dict[str, Any]:
        best = self.best
        return {
            "max_calls": best,
            "first_fail_calls": self.lowest_fail,
            "confirmed": self.confirmed.get(best, False),
            # Whether the load generator, not the contestant, set the upper bracket.
            "loadgen_bound": any(
                n == self.lowest_fail and v == "loadgen-bound" for n, v in self.history
            ),
            "steps": len(self.history),
        }


def ms(seconds: float | None) -> float | str | None:
    """Seconds as rounded milliseconds (``">10000"`` past the highest bucket)."""
    if seconds is None:
        return None
    if math.isinf(seconds):
        return ">10000"
    return round(seconds * 1e3, 1)
