# The two set-up commands: `make demo` and `make test`. Everything else is a helper of those.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WITH_KAFKA := bash deploy/kafka/with-kafka.sh

.PHONY: demo test lint unit integration bench-bakeoff bench-startup bench-latency bench-soak bench-soak-faust bench-simulation bench-obd kafka-start kafka-stop clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

## demo: start local Kafka, run a worker, feed synthetic customers, print decisions, stop everything
demo: $(STAMP)
	$(WITH_KAFKA) $(BIN)/kairos demo

## test: lint, type-check, import contracts, then unit + component + integration tests on a real broker
test: lint
	bash deploy/install-test-deps.sh
	$(WITH_KAFKA) $(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy engine schemas streams bench
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(WITH_KAFKA) $(BIN)/python -m pytest -q tests/component tests/integration

bench-bakeoff: $(STAMP)
	$(BIN)/python bench/bakeoff.py

bench-startup: $(STAMP)
	$(WITH_KAFKA) $(BIN)/python bench/startup.py

bench-latency: $(STAMP)
	$(WITH_KAFKA) $(BIN)/python bench/latency.py

bench-soak: $(STAMP)
	$(WITH_KAFKA) $(BIN)/python bench/soak.py --minutes 30

bench-soak-faust: $(STAMP)
	$(WITH_KAFKA) $(BIN)/python bench/soak.py --minutes 30 --runtime faust

bench-simulation: $(STAMP)
	$(BIN)/python bench/simulation.py

bench-obd: $(STAMP)
	$(BIN)/python bench/obd.py

kafka-start:
	bash deploy/kafka/kafka.sh start

kafka-stop:
	bash deploy/kafka/kafka.sh stop

clean:
	bash deploy/kafka/kafka.sh stop || true
	rm -rf .run $(VENV)
