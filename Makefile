# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench soak fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py gateway/ingest/_datagrams.c gateway/ingest/_twilio.c
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/callvault serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# Two pytest-xdist workers: the suite's subprocess gateways, paced calls and fuzzers leave a
# core idle much of the time, so two workers fit it in CI's budget on a 2-core machine.
# `make pytest PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -n $(PYTEST_WORKERS)

test: lint typecheck pytest

# capacity.py: the most live calls per core with nothing lost, callvault against the bare
# receiver per transport, and bench/capacity.png; CAPACITY_ARGS shortens it (10 s with all
# calls live, 15 % precision, 5 steps a search: ~35 min on this 2-core machine kind, where
# bench/README.md's runs of 4 and 3 steps took 17 + 12 min; `--quick` for a smoke).
CAPACITY_ARGS ?= --seconds 10 --precision 0.15 --max-steps 5
bench: $(VENV)/.installed-dev
	$(BIN)/python bench/capacity.py $(CAPACITY_ARGS)
	$(BIN)/python bench/crypto.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/rtp.py
	$(BIN)/python bench/transcribe.py
	$(BIN)/python bench/keys.py

# Paced calls of every transport against a serve for SOAK_MINUTES, with kill -9 + restart
# every SOAK_KILL_EVERY seconds and a PostgreSQL catalog restarted every
# SOAK_CATALOG_EVERY seconds; reports what was lost and serve's RSS over time. Not in CI.
SOAK_MINUTES       ?= 10
SOAK_KILL_EVERY    ?= 60
SOAK_CATALOG_EVERY ?= 0
SOAK_ARGS          ?=
soak: $(VENV)/.installed-dev
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) --kill-every $(SOAK_KILL_EVERY) \
		$(if $(filter-out 0,$(SOAK_CATALOG_EVERY)),--postgres --catalog-restart-every $(SOAK_CATALOG_EVERY)) \
		$(SOAK_ARGS)

# Every fuzz target for FUZZ_SECONDS each (CI runs them 4 s each in tests/fuzz/test_fuzz.py).
# The corpus grows in FUZZ_DIR/corpus and is reused by the next run; crashing inputs land in
# FUZZ_DIR/crashes/<target>/ (reproduce: python -m tests.fuzz <target> <file>).
FUZZ_SECONDS ?= 300
FUZZ_JOBS    ?= 1
FUZZ_DIR     ?= .fuzz
fuzz: $(VENV)/.installed-dev
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) --out $(FUZZ_DIR)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .fuzz
