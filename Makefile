# The one door: every task a newcomer, a technician or CI runs goes through here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test soak check bench bench-large clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "paystation-agent needs Python 3.11 or newer; run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/paystation-agent demo

test: $(STAMP)
	$(BIN)/pytest -q

# The scenario suite, long: minutes of seeded faults and kills, a 100 000-record outage.
# Figures go to soak-report.jsonl (one JSON line per scenario); a new seed: SEED=n.
soak: $(STAMP)
	rm -f soak-report.jsonl
	PAYSTATION_SOAK=1 PAYSTATION_SOAK_SEED=$${SEED:-20261128} PAYSTATION_SOAK_REPORT=soak-report.jsonl \
		$(BIN)/pytest -q tests/scenarios
	@cat soak-report.jsonl

# Benchmarks (never part of `make test`): prints the table for docs/benchmarks.md.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench --json bench-results.json

bench-large: $(BENCH_STAMP)
	$(BIN)/python -m bench --only memory --large

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
