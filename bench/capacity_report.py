"""The capacity run's output: a markdown table per transport, the summary, and the plot."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.capacity_rules import LAG_LIMIT_S
from bench.report import print_table

CONTESTANTS = ("callvault", "bare")
RSS_GOAL_KIB = 256
MARKERS = (("o", ("pass",)), ("x", ("fail", "error")), ("^", ("loadgen-bound",)))
"""The plot's marker per verdict: passed, did not pass, the load generator lagged."""
LAG_FLOOR_MS = 0.1
"""The plot's lowest loop lag (a log axis)."""


STEP_HEAD = [
    "contestant",
    "calls",
    "verdict",
    "core share",
    "other on core",
    "calls/core",
    "µs/frame",
    "lag p50 ms",
    "lag p99 ms",
    "durable p50 ms",
    "durable p99 ms",
    "RSS idle MiB",
    "RSS steady MiB",
    "RSS/call KiB",
    "loadgen lag p99 ms",
    "why",
]


def step_cells(r: Mapping[str, Any]) -> list[object]:
    def mib(kib: int | None) -> float | None:
        return None if kib is None else round(kib / 1024, 1)

    return [
        r["contestant"],
        r["calls"],
        r["verdict"],
        r.get("core_share"),
        r.get("other_on_core"),
        r.get("calls_per_core"),
        r.get("us_per_frame"),
        r.get("lag_ms_p50"),
        r.get("lag_ms_p99"),
        r.get("durable_ms_p50"),
        r.get("durable_ms_p99"),
        mib(r.get("rss_idle_kib")),
        mib(r.get("rss_steady_kib")),
        r.get("rss_per_call_kib"),
        r.get("send_lag_ms_p99_steady") or r.get("send_lag_ms_p99"),
        " ".join("; ".join(r["why"]).split()) or None,  # one line, whatever a reason held
    ]


def print_step(record: Mapping[str, Any]) -> None:
    cells = step_cells(record)
    print(
        f"# {record['transport']} {record['contestant']} {record['calls']} calls: "
        f"{record['verdict']}, share {cells[3]}, lag p99 {cells[8]} ms, "
        f"{'; '.join(record['why'])}",
        file=sys.stderr,
        flush=True,
    )


def print_report(report: Mapping[str, Any]) -> None:
    others = [
        s["other_on_core"]
        for row in report["transports"]
        for c in CONTESTANTS
        for s in row.get(c, {}).get("steps", [])
        if s.get("other_on_core") is not None
    ]
    if others:
        print(
            f"\nOther processes' share of the contestant's core, median over the steps: "
            f"{statistics.median(others):.2f} (max {max(others):.2f}); where it is not near 0, "
            "the shared machine, not only the contestant, set the figures below."
        )
    for row in report["transports"]:
        print(f"\n{row['transport']}: steps (each a fresh contestant)")
        steps = [s for c in CONTESTANTS if c in row for s in row[c]["steps"]]
        print_table(STEP_HEAD, [step_cells(s) for s in steps])
    print(
        f"\nSummary ({report['loop']} loop, {report['seconds']} s calls): the most calls "
        "that passed, per core of the contestant's CPU there"
    )
    head = ["transport", "cv max calls", "cv calls/core", "bare max calls", "bare calls/core"]
    head += ["cv/bare max calls", "cv/bare calls/core", "µs/frame cv, bare", "RSS/call KiB cv"]
    rows = []
    for row in report["transports"]:
        cv, bare = row.get("callvault", {}), row.get("bare", {})
        rows.append(
            [
                row["transport"],
                flagged(cv),
                cv.get("calls_per_core"),
                flagged(bare),
                bare.get("calls_per_core"),
                None if row.get("ratio") is None else f"**{row['ratio']}x**",
                None if row.get("ratio_per_core") is None else f"{row['ratio_per_core']}x",
                f"{cv.get('us_per_frame')}, {bare.get('us_per_frame')}",
                cv.get("rss_per_call_kib"),
            ]
        )
    print_table(head, rows)
    if "memory" in report:
        m = report["memory"]
        print(
            f"\nMemory: {m['calls']} {m['transport']} calls on callvault, {m['seconds']} s, "
            f"{m.get('ptime_ms', 20)} ms a datagram "
            f"(verdict {m['verdict']}): RSS idle {m['rss_idle_kib']} KiB, steady "
            f"{m.get('rss_steady_kib')} KiB, peak {m.get('rss_peak_kib')} KiB: "
            f"**{m.get('rss_per_call_kib')} KiB per live call** ({m.get('rss_scope')}"
            f"{live_at_peak(m)}; goal <= {RSS_GOAL_KIB}); {m.get('frames_lost')} frames lost"
        )


def live_at_peak(record: Mapping[str, Any]) -> str:
    live = record.get("most_calls_live")
    return "" if live is None else f", at most {live} calls live at once"


def flagged(result: Mapping[str, Any]) -> str | None:
    """The most calls that passed, marked when unconfirmed or when the loadgen bound it."""
    if not result:
        return None
    text = str(result["max_calls"])
    if not result["confirmed"]:
        text += " (unconfirmed)"
    if result["loadgen_bound"]:
        text += " (loadgen-bound)"
    return text


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Per transport: calls against core share (top) and loop lag p99 (bottom, the 50 ms
    limit dotted), each contestant a line; a step is a dot where it passed, a cross where
    it did not, a triangle where the load generator lagged (``MARKERS``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(
        2, max(len(rows), 1), figsize=(4.2 * max(len(rows), 1), 6.5), squeeze=False
    )
    colors = {"callvault": "tab:blue", "bare": "tab:orange"}
    for column, row in enumerate(rows):
        top, bottom = axes[0][column], axes[1][column]
        for contestant in CONTESTANTS:
            steps = sorted(row.get(contestant, {}).get("steps", []), key=lambda s: s["calls"])
            for ax, key in ((top, "core_share"), (bottom, "lag_ms_p99")):
                points = [
                    # Lag on a log axis: 0 ms drawn at its floor.
                    (s["calls"], max(s[key], LAG_FLOOR_MS) if key == "lag_ms_p99" else s[key],
                     s["verdict"])
                    for s in steps
                    if number(s.get(key))
                ]  # fmt: skip
                if not points:
                    continue
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    "-",
                    color=colors[contestant],
                    label=contestant,
                    alpha=0.6,
                )
                for marker, verdicts in MARKERS:
                    chosen = [p for p in points if (p[2] in verdicts)]
                    ax.scatter(
                        [p[0] for p in chosen],
                        [p[1] for p in chosen],
                        marker=marker,
                        color=colors[contestant],
                    )
        top.set_title(row["transport"])
        top.set_ylabel("core share (CPU s / s)")
        bottom.set_ylabel("loop lag p99 (ms)")
        bottom.axhline(LAG_LIMIT_S * 1e3, color="grey", linestyle=":", linewidth=1)
        bottom.set_yscale("log")  # 2 ms and 300 ms on one axis, and the limit between
        bottom.set_ylim(LAG_FLOOR_MS, max(bottom.get_ylim()[1], 2 * LAG_LIMIT_S * 1e3))
        top.set_ylim(bottom=0)
        bottom.set_xlabel("concurrent calls")
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
