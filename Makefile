# The two commands of the README: `make up` and `make test`. Everything else is
# what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: up test setup test-tools runtime-tools clean

up: $(STAMP) runtime-tools
	$(BIN)/cityid up

test: $(STAMP) test-tools runtime-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# System tools the tests drive (independent checkers, decoders, DNS clients).
test-tools:
	sh scripts/install-test-tools.sh

# Debian packages `cityid up` runs better with (jemalloc for the embedded Valkey); without
# root they are skipped with a note, and the wheel's Valkey runs as built.
runtime-tools:
	sh scripts/install-runtime-tools.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
