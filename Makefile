# drkit: the two commands that do all set-up on a fresh machine are
#   make demo   back up a throwaway PostgreSQL + .env files to the local repository, verify, restore
#   make test   install what the tests need and run them
.PHONY: setup docker-setup test lint demo bench rss clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup.sh

test: setup docker-setup lint
	$(PY) -m pytest -q

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
