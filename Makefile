# A newcomer needs two targets: `make demo` and `make test`. Both install what they need first:
# the Python environment here, and (on first use, into .cache/) the Kafka broker's jars from Maven
# Central and the commercetools emulator from npm.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint reliability bench lock rules clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

SOURCE ?= kafka

demo: install
	$(BIN)/python -m tests.stack.demo --source $(SOURCE)

# PYTEST_ARGS narrows the run (CI's second pass), e.g. make test PYTEST_ARGS='-k "not pubsub"'.
test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check connector tests
	$(BIN)/ruff format --check connector tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache .pytest_cache

# The fault suite alone (it also runs in `make test`); its last line is the reliability report.
reliability: install
	$(BIN)/pytest -m reliability
	@cat .cache/reliability.json

# Re-pins deploy/requirements.lock (what the Docker image installs, hash-checked) from pyproject.toml.
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet -o deploy/requirements.lock

# Writes the PrometheusRule of deploy/kubernetes/components/monitoring from deploy/monitoring/connector.rules.yaml.
rules: install
	$(BIN)/python -m tests.monitoring

# The benchmark (tests/bench): one JSON line, also written to tests/bench/result.json.
# BENCH_PAYMENTS and BENCH_LATENCY_MS change the load; `make bench ARGS=--profile` adds a py-spy profile.
bench: install
	$(BIN)/pip install --quiet py-spy
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m tests.bench $(ARGS)
