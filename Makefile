# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install services lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make demo: a simulated fleet patched end to end on the embedded default (SQLite + in-process broker)
demo: $(STAMP)
	$(BIN)/patchaas demo

## make test: PostgreSQL and Redis up, then the whole suite against them
services:
	./scripts/ensure-services

test: $(STAMP) services
	CI=$${CI:-true} $(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check orchestrator workers schemas tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
