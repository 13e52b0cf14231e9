"""Category rules (``ai.categories``) against the 50 calls labelled by hand, and what they cost
over the keyword matcher they replaced.

Issue goals: 100 % agreement with the labels on the 50 labelled calls
(``tests/data/categories/calls.json``: EN and RO calls written as transcripts, each with the
categories a careful reader finds in it, and one shared set of categories with every rule
type) and under 50 ms per call.

* **agreement**: a call agrees when the categories the engine matches are exactly its
  labels; also per (call, category) pair.
* **ms per call**: every category of the file checked on one call (``match_categories``),
  timed ``--repeats`` times; a call's time is the minimum of its repeats, and the table gives
  the median and the largest over the calls.
* **baseline**: the categories still written as lists of phrases (old form), checked by the
  keyword matcher (``ai.topics.match_categories``, no evidence) and by the rules engine,
  alternating call by call in this process; the ratio is rules / keyword (per-call medians).
  The engine builds a category's phrase matcher once for all calls, the keyword matcher on
  every call.

``load_calls`` is shared with ``tests/unit/test_category_rules.py``, which holds the
agreement goal (timings are never asserted in tests). Prints a table and one JSON line.

    python bench/categories.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.categories import match_categories  # noqa: E402
from ai.topics import match_categories as keyword_categories  # noqa: E402
from ai.transcript import Interval, Segment, Transcript  # noqa: E402
from bench.arguments import positive  # noqa: E402
from bench.report import print_table  # noqa: E402
from storage.categoryrules import CategoryRules  # noqa: E402
from storage.instructions import parse_instructions  # noqa: E402

CALLS = Path(__file__).resolve().parent.parent / "tests/data/categories/calls.json"

Categories = Mapping[str, Sequence[str] | CategoryRules]


@dataclass(frozen=True, slots=True)
class LabelledCall:
    """One call of the file: its transcript and the categories it is labelled with."""

    id: str
    transcript: Transcript
    expected: frozenset[str]
    note: str


def load_calls(path: Path = CALLS) -> tuple[Categories, list[LabelledCall]]:
    """The file's categories (validated as a tenant's instructions are) and its calls."""
    data = json.loads(path.read_text(encoding="utf-8"))
    categories = parse_instructions({"ai": {"categories": data["categories"]}}).ai.categories
    calls = [
        LabelledCall(
            id=call["id"],
            transcript=Transcript(
                language=call["language"],
                model="labelled",
                duration_s=call["duration_s"],
                segments=tuple(Segment(**segment) for segment in call["segments"]),
                speech={
                    track: tuple(Interval(start, end) for start, end in spans)
                    for track, spans in call["speech"].items()
                },
            ),
            expected=frozenset(call["expected"]),
            note=call["note"],
        )
        for call in data["calls"]
    ]
    return categories, calls


def matched(call: LabelledCall, categories: Categories) -> frozenset[str]:
    """The names of the categories the engine finds in ``call``."""
    found = match_categories(call.transcript, categories, call.transcript.language)
    return frozenset(item["name"] for item in found)


def timed_ms(work: Callable[..., object], *args: Any) -> float:
    """Milliseconds ``work(*args)`` takes."""
    began = time.perf_counter()
    work(*args)
    return (time.perf_counter() - began) * 1000


def run(repeats: int) -> dict[str, Any]:
    categories, calls = load_calls()
    names = sorted(categories)
    found = {call.id: matched(call, categories) for call in calls}
    agreeing = sum(found[call.id] == call.expected for call in calls)
    pairs_right = sum(
        (name in found[call.id]) == (name in call.expected) for call in calls for name in names
    )

    best: dict[str, float] = {}
    for _ in range(repeats):
        for call in calls:
            ms = timed_ms(matched, call, categories)
            best[call.id] = min(ms, best.get(call.id, ms))

    old_form: dict[str, Sequence[str]] = {
        name: definition
        for name, definition in categories.items()
        if not isinstance(definition, CategoryRules)
    }
    keyword_best: dict[str, float] = {}
    rules_best: dict[str, float] = {}
    for _ in range(repeats):
        for call in calls:  # alternating, so drift hits both alike
            t = call.transcript
            ms = timed_ms(keyword_categories, t.segments, old_form)
            keyword_best[call.id] = min(ms, keyword_best.get(call.id, ms))
            ms = timed_ms(match_categories, t, old_form, t.language)
            rules_best[call.id] = min(ms, rules_best.get(call.id, ms))
    keyword_ms = statistics.median(keyword_best.values())
    rules_ms = statistics.median(rules_best.values())
    return {
        "bench": "categories",
        "calls": len(calls),
        "categories": len(names),
        "repeats": repeats,
        "agreeing_calls": agreeing,
        "agreement": round(agreeing / len(calls), 4),
        "pair_agreement": round(pairs_right / (len(calls) * len(names)), 4),
        "ms_per_call_median": round(statistics.median(best.values()), 3),
        "ms_per_call_max": round(max(best.values()), 3),
        "old_form_categories": len(old_form),
        "keyword_ms_median": round(keyword_ms, 4),
        "rules_ms_median": round(rules_ms, 4),
        "rules_vs_keyword": round(rules_ms / keyword_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=positive, default=5)
    args = parser.parse_args()
    result = run(args.repeats)
    machine = platform.processor() or platform.machine()
    print(f"category rules on the labelled calls ({machine}, Python "
          f"{platform.python_version()}; min of {args.repeats} repeats per call)")  # fmt: skip
    print_table(
        ["calls", "categories", "agreement", "pairs", "ms/call median", "ms/call max"],
        [[result["calls"], result["categories"],
          f'{result["agreeing_calls"]}/{result["calls"]} ({result["agreement"]:.0%})',
          f'{result["pair_agreement"]:.2%}', result["ms_per_call_median"],
          result["ms_per_call_max"]]],
    )  # fmt: skip
    print()
    print_table(
        ["old-form categories", "keyword ms/call", "rules ms/call", "rules / keyword"],
        [[result["old_form_categories"], result["keyword_ms_median"], result["rules_ms_median"],
          f'{result["rules_vs_keyword"]}x']],
    )  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
