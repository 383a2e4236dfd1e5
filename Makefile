# drkit: the two commands that do all set-up on a fresh machine are
#   make demo   back up a throwaway PostgreSQL + .env files to the local repository, verify, restore
#   make test   install what the tests need and run them
#   make drills the Docker scenario suites beyond the vultr end to end (CI runs them when
#               their files changed: scripts/drills-stamp.sh)
#   make faults the fault campaign (tests/faults/); writes docs/reliability.md
#   make screenshot  the README's picture of the fleet page (docs/images/report.png)
.PHONY: setup docker-setup test drills faults lint demo bench rss screenshot clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup.sh

test: setup docker-setup lint
	$(PY) -m pytest -q -m "not drills and not faults"

drills: setup docker-setup
	$(PY) -m pytest -q -m drills
	@bash scripts/drills-stamp.sh write

# Every scenario (the quick ones `make test` runs too; not test_fixes.py, regression tests
# for `make test` only); DRKIT_FAULTS_ITERATIONS (default 2)
# and DRKIT_FAULTS_SEED choose how many runs and where the faults land.
FAULTS_ROWS := .faults-rows.jsonl
faults: setup
	@rm -f $(FAULTS_ROWS)
	@# Clock-skew scenarios move drkit's clock with libfaketime (Debian's faketime).
	@[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt-get install -y faketime
	DRKIT_FAULTS_REPORT=$(CURDIR)/$(FAULTS_ROWS) $(PY) -m pytest -q tests/faults \
	  --ignore=tests/faults/test_fixes.py; \
	  rc=$$?; $(PY) -m tests.faults.report $(FAULTS_ROWS) docs/reliability.md || rc=1; \
	  rm -f $(FAULTS_ROWS); exit $$rc

docker-setup:
	@# Drills need an engine; off CI a machine without one skips the drill tests.
	@bash scripts/docker-setup.sh || { [ -z "$$CI" ] && echo "make: no Docker engine: drill tests will be skipped"; }

lint:
	$(VENV)/bin/ruff check drkit tests bench scripts
	$(VENV)/bin/ruff format --check drkit tests bench scripts
	$(PY) -m mypy

demo: setup
	$(PY) scripts/demo.py

rss: setup
	$(PY) bench/backup_rss.py --size-mb 1100

bench: setup
	$(PY) bench/run.py $(BENCH)

# Taken by the report page's browser test (Debian's Chromium through Playwright) from the
# fleet it builds: the picture is of what the test asserts.
screenshot: setup
	@mkdir -p docs/images
	DRKIT_REPORT_SCREENSHOT=$(CURDIR)/docs/images/report.png \
	  $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_report_browser.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
