# Shortcuts; the README's two commands work without make.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e '.[dev]' && touch $@

.PHONY: install demo test lint bench mutation
install: $(VENV)/.installed
demo: install
	$(VENV)/bin/userhub-sync demo
test: install
	$(VENV)/bin/pytest -q -n 2
lint: install
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check . && $(VENV)/bin/mypy
bench: install
	$(PY) -m bench
# Mutation testing of the core (slow, never in CI): SEED and SIZE pick the sample, SIZE=all runs every mutant;
# RESUME=1 reruns only the last run's sampled mutants not yet killed (after adding tests).
SEED ?= 2026
SIZE ?= 600
mutation: install
	$(PY) scripts/mutation.py $(if $(RESUME),--resume,--seed $(SEED) $(if $(filter all,$(SIZE)),--all,--size $(SIZE)))
