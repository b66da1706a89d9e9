# alicom-receipts: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-sandbox clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

# Runs the whole loop locally on the embedded defaults (sandbox, publisher, worker).
demo: $(STAMP)
	$(VENV)/bin/alicom-receipts demo

# Installs what the tests need (a real redis-server included) and runs them.
test: $(STAMP)
	bash .ci/ensure-redis
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check consumer tests bench
	$(VENV)/bin/mypy

bench: bench-sandbox

bench-sandbox: $(STAMP)
	$(PY) bench/sandbox_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
