"""``python -m tests.fuzz TARGET [CORPUS_DIR...] [libFuzzer flags]``: fuzz one target.

The project's packages are imported under atheris's instrumentation (so coverage guides
the fuzzer through them), and nothing of them may be imported before: this module imports
only atheris and the standard library until then. With a file instead of a directory, the
one input is run (how a crash is reproduced).
"""

from __future__ import annotations

import importlib
import sys

import atheris

from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz {{{','.join(TARGETS)}}} [CORPUS...] [-flags]")
    target = sys.argv[1]
    with atheris.instrument_imports(include=["gateway", "crypto", "storage"]):
        module = importlib.import_module(f"tests.fuzz.{target}")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], module.fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
