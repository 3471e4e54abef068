# Shortcuts; the README's two commands work without make.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e '.[dev]' && touch $@

.PHONY: install demo test lint bench
install: $(VENV)/.installed
demo: install
	$(VENV)/bin/userhub-sync demo
test: install
	$(VENV)/bin/pytest -q -n 2
lint: install
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check . && $(VENV)/bin/mypy
bench: install
	$(PY) -m bench
