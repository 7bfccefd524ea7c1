# Two commands set everything up: `make demo` and `make test`. Both create .venv from the
# hash-pinned requirements.lock on first use; only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format typecheck pytest reliability bench bench-full readme lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# Byte-compile the package: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
	# start would otherwise recompile it, about 0.15 s per process.
	$(BIN)/python -m compileall -q connector
	touch $@

demo: install
	$(BIN)/oci-images demo --output demo-out

test: lint typecheck pytest

lint: install
	$(BIN)/ruff check connector tests benchmarks scripts
	$(BIN)/ruff format --check connector tests benchmarks scripts

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

# The whole reliability suite (make test runs its fast cases): random SIGKILLs of the command
# and its workers, kills during the swap, a full disk, hostile servers; about 5 minutes.
reliability: install
	$(BIN)/pytest -q -m reliability tests/test_reliability.py

format: install
	$(BIN)/ruff check --fix connector tests benchmarks scripts
	$(BIN)/ruff format connector tests benchmarks scripts

bench: install
	$(BIN)/python -m benchmarks

bench-full: install
	$(BIN)/python -m benchmarks --full

# Regenerate the README's tables and configs/example.toml from connector/schema.py and config.py.
readme: install
	$(BIN)/python scripts/update_readme.py

# Regenerate the lock after changing dependencies in pyproject.toml (needs uv).
lock:
	uv pip compile pyproject.toml --all-extras --group dev --generate-hashes \
		--python-version 3.11 --no-header --quiet -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-out
