"""Command-line argument types the benchmark programs share."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def positive_list(text: str) -> list[int]:
    return [positive(part) for part in text.split(",")]
