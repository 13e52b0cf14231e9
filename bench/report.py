"""The result table every benchmark program prints (STYLE.md §13: a table and a JSON line).

One Markdown table format for all of them, so that bench/README.md can paste any bench's
output as it is and the smoke tests can look for the same ``| cell |`` shape everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def print_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print ``head`` and ``rows`` as a Markdown table; a ``None`` cell (a figure the run did
    not measure) prints as ``-``."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cells in rows:
        print("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
