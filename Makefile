# Every target sets up what it needs: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact versions, with the hashes of every file PyPI publishes for them, that the tests
# pass with: the runtime dependencies and the dev extra, for Python 3.11 on Linux. Every
# install takes them from here; `make lock` refreshes them from pyproject.toml.
LOCK := requirements/lock.txt
# The same plus the bench extra (matplotlib), for `make bench` only.
BENCH_LOCK := requirements/bench.txt
# The runtime dependencies alone, at the same versions: what a production install takes
# (docs/operations.md, "Installing into /opt/zajel"), without the test tools.
RUNTIME_LOCK := requirements/runtime.txt
LOCK_TOOL := uv==0.13.9
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 --python-platform linux \
	--custom-compile-command "make lock"

# .venv is kept only if its python runs, is 3.11 or newer and has pip (and, when PYTHON is given
# on the command line or in the environment, is that interpreter's version); otherwise it was
# made by an unsuitable or vanished interpreter, and is made again.
ifneq ($(origin PYTHON),file)
WANT := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
endif
VENV_CHECK := import sys, pip; w = sys.argv[1:]; \
	sys.exit(sys.version_info < (3, 11) or (w != [] and w[0] != "%d.%d" % sys.version_info[:2]))
VENV_OK := $(shell $(BIN)/python -c '$(VENV_CHECK)' $(WANT) >/dev/null 2>&1 && echo yes)
ifneq ($(VENV_OK),yes)
.PHONY: $(VENV)/pyvenv.cfg
endif

.PHONY: run test lint bench format lock clean

$(VENV)/pyvenv.cfg:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: $(PYTHON) is not Python 3.11 or newer; name one: make PYTHON=python3.12" >&2; \
		exit 1; }
	@if [ -e $(VENV) ]; then \
		echo "make: $(VENV) is unusable (its python does not run, is not $(or $(WANT),3.11+) or has no pip): making it again"; \
		rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls whenever the venv is made again, or the lock or pyproject.toml change.
$(STAMP): $(VENV)/pyvenv.cfg pyproject.toml $(LOCK) requirements/check.py
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python requirements/check.py
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/zajel serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict zajel

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(BENCH_LOCK)
	$(BIN)/python bench/run_all.py
	$(BIN)/python bench/cluster.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Keeps the pinned versions that pyproject.toml still allows and resolves the rest;
# `make lock UPGRADE=1` moves every package to the newest version allowed. The bench and
# runtime locks are held to the main lock's versions.
lock: $(VENV)/pyvenv.cfg
	$(BIN)/python -m pip install --quiet $(LOCK_TOOL)
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) pyproject.toml \
		--extra dev -o $(LOCK)
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) pyproject.toml \
		--extra dev --extra bench -c $(LOCK) -o $(BENCH_LOCK)
	$(BIN)/uv pip compile $(LOCK_FLAGS) pyproject.toml -c $(LOCK) -o $(RUNTIME_LOCK)

clean:
	rm -rf $(VENV) build dist *.egg-info
