# alicom-receipts: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-lowest lint lint-deploy bench bench-sandbox bench-worker bench-bulk bench-scale bench-push soak verify-units install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

# Runs the whole loop locally on the embedded defaults (Redis, sandbox, publisher, worker).
demo: $(STAMP)
	bash .ci/ensure-redis
	$(VENV)/bin/alicom-receipts demo

# Installs what the tests need (real redis-server and PostgreSQL, Debian's chromium for the
# report page's browser test, Debian's prometheus for the dashboard and alert tests), runs
# the lint, then the whole suite on the default python3 and the unit tests on every other
# supported Python (3.10-3.13 from pyenv or PATH, each in .venv-py3.X): .ci/test-suite runs
# them side by side in pytest-xdist processes, then the few tests marked `alone` by themselves.
TEST_WORKERS ?= 3
test: lint
	bash .ci/ensure-redis
	bash .ci/ensure-postgres
	bash .ci/ensure-chromium
	bash .ci/ensure-prometheus
	PY=$(PY) TEST_WORKERS=$(TEST_WORKERS) bash .ci/test-suite

# The dependency ranges' floors: every dependency at its lowest allowed version (not in CI).
test-lowest:
	bash .ci/ensure-redis
	bash .ci/test-lowest

# ruff (complexity limit on), mypy strict, and the layer rules (import-linter contracts).
lint: $(STAMP)
	$(VENV)/bin/ruff check consumer alicom_sandbox tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory lint-deploy

# The container and Kubernetes files: hadolint on the Dockerfile, the kustomize base rendered
# by kubectl and every manifest checked against the Kubernetes schemas (kubernetes-validate).
lint-deploy: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile
	bash .ci/ensure-kubectl
	kubectl kustomize deploy/kubernetes > $(VENV)/kustomized.yaml
	$(VENV)/bin/kubernetes-validate --strict --quiet $(VENV)/kustomized.yaml \
		deploy/kubernetes/secret.example.yaml

# Benchmarks: not part of the test suite (this machine is shared and noisy).
bench: bench-sandbox bench-worker bench-bulk bench-scale bench-push

bench-sandbox: $(STAMP)
	$(PY) bench/sandbox_bench.py

# BENCH_WORKER_ARGS, e.g. "--redis single,cluster" (a local Redis Cluster side by side).
bench-worker: $(STAMP)
	bash .ci/ensure-redis
	$(PY) bench/worker_bench.py $(BENCH_WORKER_ARGS)

# The bulk sender's three handlers alone (the worker bench runs them in the worker too).
bench-bulk: $(STAMP)
	bash .ci/ensure-redis
	$(PY) bench/bulk_handlers.py

bench-scale: $(STAMP)
	bash .ci/ensure-redis
	$(PY) bench/scale_bench.py

bench-push: $(STAMP)
	bash .ci/ensure-redis
	$(PY) bench/push_bench.py

# The soak (not in CI; tests/e2e/test_soak_short.py is its short version): 100,000 receipts,
# 4 workers killed at random, MNS faults, Redis restarts, push under load. Figures: README.
soak: $(STAMP)
	bash .ci/ensure-redis
	$(PY) bench/soak.py

# systemd-analyze verify and security on the units (installs systemd's tools if missing).
verify-units: $(STAMP)
	bash systemd/verify

# Installs into /opt/alicom-receipts with the units, a config and a credentials folder.
install:
	bash systemd/install

clean:
	rm -rf $(VENV) .venv-py3.* .venv-lowest build *.egg-info .pytest_cache .mypy_cache .ruff_cache
