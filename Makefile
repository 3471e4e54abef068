# Shortcuts; the README's two commands work without make.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e '.[dev]' && touch $@

.PHONY: install demo test lint bench bench-drain mutation
install: $(VENV)/.installed
demo: install
	$(VENV)/bin/userhub-sync demo
test: install
	$(VENV)/bin/pytest -q -n 2
lint: install
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check . && $(VENV)/bin/mypy
bench: install
	$(PY) -m bench
# The backlog drain (about 7 minutes): four worker processes against a rate-limited fake UserHub
bench-drain: install
	$(PY) -m bench --only drain --output bench/results-drain.md
# Mutation testing of the core (slow, never in CI): SEED, SIZE and PER_MODULE pick the sample (PER_MODULE of each
# module first, the rest uniformly), SIZE=all runs every mutant; RESUME=1 reruns only the last run's sampled
# mutants not yet killed (after adding tests).
SEED ?= 2026
SIZE ?= 800
PER_MODULE ?= 20
mutation: install
	$(PY) scripts/mutation.py $(if $(RESUME),--resume,--seed $(SEED) --per-module $(PER_MODULE) $(if $(filter all,$(SIZE)),--all,--size $(SIZE)))
