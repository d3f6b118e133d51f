# A newcomer needs two targets: `make demo` and `make test`. Both install what they need first:
# the Python environment here, and (on first use, into .cache/) the Kafka broker's jars from Maven
# Central and the commercetools emulator from npm.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint reliability clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/connector demo

test: install lint
	$(BIN)/pytest

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
