# The README's two commands are `make run` and `make test`; the rest are extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: run test unit bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

# Start the embedded default: a local 3-node cluster with workers, in the foreground.
run: $(VENV)/.installed
	$(VENV)/bin/raftq dev

# Unit, protocol and integration tests (real node processes on loopback).
test: $(VENV)/.installed
	$(PY) -m pytest -q tests

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit tests/protocol

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
