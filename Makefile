# The README's two commands: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --constraint constraints.txt

.PHONY: demo test lint docs install clean

$(BIN)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[dev,lightning,docs,hf,demo,test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cosmo-optim demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

docs: $(BIN)/.installed
	$(BIN)/mkdocs build --strict

test: lint
	$(BIN)/pytest
	$(BIN)/mkdocs build --strict --site-dir "$$(mktemp -d)"
	$(BIN)/cosmo-optim reproduce all --quick --out "$$(mktemp -d)"

clean:
	rm -rf $(VENV) build dist *.egg-info
