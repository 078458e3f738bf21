# Each target bootstraps what it needs first; every step is idempotent and quick the second time.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DIR := .build
SYS_STAMP := $(STAMP_DIR)/system-deps.stamp
VENV_STAMP := $(VENV)/.installed.stamp
PYTEST_ARGS ?=

.PHONY: test demo bench deps clean help

help:
	@echo "make test   install what is needed (apt packages, .venv) and run the whole suite"
	@echo "make demo   run the failover demo"
	@echo "make bench  run the benchmarks and write BENCHMARKS.md"

$(SYS_STAMP): scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	@mkdir -p $(STAMP_DIR) && touch $@

$(VENV_STAMP): pyproject.toml $(SYS_STAMP)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps: $(VENV_STAMP)

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

demo: deps
	$(PY) -m haagent.demo

bench: deps
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) $(STAMP_DIR) build *.egg-info
