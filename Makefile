# kpistream: the two commands a newcomer runs are `make demo` and `make test`.
# Everything else is installed and started on demand (virtualenv, Kafka jars, Redis).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
KAFKA_LIBS := $(or $(KPISTREAM_LOCAL_DIR),.local)/kafka/libs

.PHONY: help tools venv deps up down status lint unit test soak demo bench alert-sim clean

help:
	@echo "make demo   - set everything up and show live KPIs (Ctrl-C stops it)"
	@echo "make test   - set everything up and run the whole test suite on real services"
	@echo "make up / down / status - the local Kafka + Redis stack"
	@echo "make soak   - the long variants (five SIGKILLs, a 20-minute soak, more alert and profile combinations; ~35 min)"
	@echo "make lint / unit / bench / alert-sim / clean"

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) (3.11+) is required" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Python 3.11+ is required" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# The broker is Apache Kafka run from Maven Central jars: Java always, Maven to fetch the jars.
tools:
	@command -v java >/dev/null || { echo "error: java is required to run Kafka; install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@ls $(KAFKA_LIBS)/kafka_2.13-*.jar >/dev/null 2>&1 || command -v mvn >/dev/null || { echo "error: mvn is required to fetch the Kafka jars from Maven Central; install Maven (Debian: apt-get install maven)" >&2; exit 1; }

deps: tools venv
	@PY=$(PY) $(STACK) deps

up: tools venv
	@PY=$(PY) $(STACK) up

down:
	@PY=$(PY) $(STACK) down

status:
	@PY=$(PY) $(STACK) status

lint: venv
	$(VENV)/bin/ruff check src tests scripts examples benchmarks
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

test: up lint
	$(VENV)/bin/pytest -q --durations=15

soak: up
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q -e '.[dev,bench]'
	$(VENV)/bin/pytest -q -m soak tests/integration

demo: tools venv
	@PY=$(PY) deploy/local/demo.sh

bench: up
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/pipeline_cost.py
	$(PY) benchmarks/engine_bench.py
	$(PY) benchmarks/profile_bench.py

alert-sim: venv
	$(PY) scripts/alert_sim.py

clean: down
	rm -rf .local
