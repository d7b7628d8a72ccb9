# The one door: every task a newcomer, a technician or CI runs goes through here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test soak check bench bench-large clean deb

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

# Import contracts (pyproject.toml, [tool.importlinter]) keep the package boundaries.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The Debian package (debian/README.source): dist/paystation-agent_<version>_<arch>.deb,
# built from the checkout's tracked files. DEB_VERSION=v builds it as version v.
# Needs: apt-get install debhelper dh-virtualenv python3-venv
DIST ?= dist
DEB_VERSION ?=
deb:
	@command -v dpkg-buildpackage >/dev/null && command -v dh_virtualenv >/dev/null || \
		{ echo "make deb needs: apt-get install debhelper dh-virtualenv python3-venv" >&2; exit 1; }
	rm -rf build/deb && mkdir -p build/deb/src $(DIST)
	if [ -d .git ] || [ -f .git ]; then git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t build/deb/src; \
	else tar -c --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist . | tar -x -C build/deb/src; fi
	if [ -n "$(DEB_VERSION)" ]; then { \
		printf 'paystation-agent (%s) unstable; urgency=medium\n\n  * Built as %s by make deb.\n\n' "$(DEB_VERSION)" "$(DEB_VERSION)"; \
		printf ' -- paystation-agent maintainers <paystation-agent@localhost>  %s\n\n' "$$(date -R)"; \
		cat debian/changelog; } > build/deb/src/debian/changelog; fi
	cd build/deb/src && dpkg-buildpackage -b -us -uc --no-sign >../build.log 2>&1 || \
		{ tail -40 ../build.log >&2; echo "dpkg-buildpackage failed; the whole log: build/deb/build.log" >&2; exit 1; }
	cp build/deb/paystation-agent_*.deb $(DIST)/
	@ls -1 build/deb/paystation-agent_*.deb | sed 's|build/deb/|$(DIST)/|'

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
