# Two commands set everything up: `make demo` and `make test`. Both create .venv from the
# hash-pinned requirements.lock on first use; only Python 3.11+ and make are needed. `make demo`
# installs only the core and DuckDB (about 20 packages, from the same lock: scripts/lock_subset.py);
# `make test` (and every other target) installs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_REQUIREMENTS := $(VENV)/requirements-demo.txt

.PHONY: install demo test lint format typecheck pytest reliability bench bench-full bench-tools readme \
	docs regions lock clean worked-questions install-airflow test-airflow lock-airflow \
	test-container

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

# The demo needs the core and DuckDB only; with the full install already there, nothing more.
$(DEMO_STAMP): requirements.lock pyproject.toml scripts/lock_subset.py
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PYTHON) scripts/lock_subset.py requirements.lock duckdb > $(DEMO_REQUIREMENTS)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEMO_REQUIREMENTS)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m compileall -q connector
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/oci-images demo --output demo-out

test: lint typecheck docs pytest test-airflow

lint: install
	$(BIN)/ruff check connector tests benchmarks scripts
	$(BIN)/ruff format --check connector tests benchmarks scripts
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

# The whole reliability suite (make test runs its fast cases): random SIGKILLs of the command
# and its workers, kills during the swap, a full disk, hostile servers; about 5 minutes.
reliability: install
	$(BIN)/pytest -q -m reliability tests/test_reliability.py tests/test_reliability_s3.py tests/test_lake.py \
		tests/test_inflight_budget.py

format: install
	$(BIN)/ruff check --fix connector tests benchmarks scripts
	$(BIN)/ruff format connector tests benchmarks scripts

bench: install
	$(BIN)/python -m benchmarks

bench-full: install bench-tools
	$(BIN)/python -m benchmarks --full

# The three questions of docs/guides/querying.md, answered with DuckDB from two exports of the
# emulator's realistic tenancy a day apart. ARGS="--output DIR" keeps the lake,
# ARGS="--today YYYY-MM-DD" gives the guide's output exactly.
worked-questions: install
	$(BIN)/python scripts/worked_questions.py $(ARGS)

# The OCI CLI for the --full table (S1), in an environment of its own: it pins versions the
# project's lock cannot take (certifi < 2026), and only the benchmarks use it.
bench-tools: .venv-oci-cli/bin/oci

.venv-oci-cli/bin/oci:
	$(PYTHON) -m venv .venv-oci-cli
	.venv-oci-cli/bin/python -m pip install --quiet oci-cli==3.95.1

# Regenerate the documentation's reference pages (docs/reference/: configuration keys, columns,
# command line) and configs/example.toml from connector/config.py, schema.py and cli.py.
readme: install
	$(BIN)/python scripts/update_readme.py

# The documentation site, into site/: fails when a generated page is stale (`make readme`), or
# when a link, an anchor or a page of the navigation is missing (--strict).
docs: install
	$(BIN)/python scripts/update_readme.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Regenerate connector/oci/_region_table.py from the installed official SDK (after upgrading oci).
regions: install
	$(BIN)/python scripts/update_regions.py

# Regenerate the lock after changing dependencies in pyproject.toml (needs uv). Every extra but
# `airflow`, which has an environment and a lock of its own (below).
MAIN_EXTRAS = $(shell $(PYTHON) -c 'import tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(" ".join("--extra " + e for e in extras if e != "airflow"))')
lock:
	uv pip compile pyproject.toml $(MAIN_EXTRAS) --group dev --generate-hashes \
		--python-version 3.11 --no-header --quiet -o requirements.lock
	# The build backend, hash-pinned too: the Dockerfile builds the wheel with it.
	$(PYTHON) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
		| uv pip compile - --generate-hashes --python-version 3.11 --no-header --quiet \
		-o requirements-build.lock

# -- The container image ---------------------------------------------------------------------
# Builds the Dockerfile (BASE=python:3.11-slim, or an equivalent built from Debian's packages
# when that cannot be pulled) with a real engine and runs tests/test_container.py against the
# image: its user and entry point, `oci-images demo`, an export against the emulator on the
# host's loopback. Without a running engine it says so and fails. Not part of `make test`.
# The defaults suit podman as root on a cgroup-v1 host without CAP_SYS_RESOURCE (crun refuses
# hybrid cgroups, the default rlimits cannot be raised): override them elsewhere, e.g.
# `make test-container CONTAINER_ENGINE=docker CONTAINER_ENGINE_FLAGS= CONTAINER_RUN_FLAGS=`.
CONTAINER_ENGINE ?= podman
CONTAINER_ENGINE_FLAGS ?= --cgroup-manager cgroupfs --runtime runc --events-backend file
CONTAINER_RUN_FLAGS ?= --ulimit nofile=4096:4096 --ulimit nproc=4096:4096

test-container: install
	CONTAINER_ENGINE="$(CONTAINER_ENGINE)" CONTAINER_ENGINE_FLAGS="$(CONTAINER_ENGINE_FLAGS)" \
		CONTAINER_RUN_FLAGS="$(CONTAINER_RUN_FLAGS)" $(BIN)/python scripts/container_image.py

# -- Airflow ---------------------------------------------------------------------------------
# connector.airflow is tested under real Airflow 3 in .venv-airflow, built from its own
# hash-pinned lock: Airflow pins many packages that requirements.lock also pins, differently.
# tests/airflow run only there (the main pytest run leaves them out when Airflow is missing).
AF_VENV := .venv-airflow
AF_BIN := $(AF_VENV)/bin
AF_STAMP := $(AF_VENV)/.installed

install-airflow: $(AF_STAMP)

$(AF_STAMP): requirements-airflow.lock pyproject.toml
	test -x $(AF_BIN)/python || $(PYTHON) -m venv $(AF_VENV)
	$(AF_BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-airflow.lock
	$(AF_BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# mypy --strict on connector/airflow, named file by file: the project's mypy settings leave it
# out, since .venv has no Airflow.
test-airflow: install-airflow
	$(AF_BIN)/mypy connector/airflow/*.py
	$(AF_BIN)/pytest -q tests/airflow

lock-airflow:
	uv pip compile pyproject.toml requirements-airflow.in --extra airflow --extra oci \
		--generate-hashes --python-version 3.11 --no-header --quiet -o requirements-airflow.lock

clean:
	rm -rf $(VENV) $(AF_VENV) .venv-oci-cli .mypy_cache .ruff_cache .pytest_cache demo-out site
