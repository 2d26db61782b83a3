# Two commands matter: `make demo` and `make test`.  Both install what they
# need into .venv and node_modules first (only when the inputs changed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP_PY   := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
PYTEST_ARGS ?=

.PHONY: all install demo test test-slow bench clean devnet-down

all: test

install: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: install
	$(PY) -m bridge.demo

# The house rules first (ruff's lint and format check, the import-linter layers), then the example project as a pytest
# session of its own (the plugin seen from outside), then the suite.
test: install
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .
	$(BIN)/lint-imports --no-cache
	cd examples/devnet-tests && ../../$(PY) -m pytest -q -p no:cacheprovider
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

devnet-down:
	-$(BIN)/bridgectl devnet down

clean: devnet-down
	rm -rf $(VENV) node_modules .devnet .pytest_cache .hypothesis
