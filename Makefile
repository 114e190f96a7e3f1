# ThingHub developer entry points. Every target creates .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ./data

.PHONY: run cluster test test-all crash cluster-test cluster-crash lint bench bench-quick bench-backlog clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Run the hub with embedded defaults (data in ./data, MQTT 1883, HTTP 8080).
run: $(STAMP)
	$(BIN)/thinghub serve --data-dir $(DATA)

## A cluster on loopback: 3 NATS servers with JetStream and 3 hubs (thinghub/cluster/demo.py);
## prints their endpoints and a root key; Ctrl-C stops everything.
cluster: $(STAMP)
	$(BIN)/python -m thinghub.cluster.demo

## The test suite (what CI runs): lint gates, then every test but the long ones.
test: $(STAMP)
	$(BIN)/ruff check thinghub tests bench
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow"

## Every test, long ones included.
test-all: $(STAMP)
	$(BIN)/pytest

## The long crash loop: kill -9 the hub 25 times under load; nothing acknowledged is lost.
crash: $(STAMP)
	$(BIN)/pytest -m slow tests/durability

## The cluster tests alone (also part of `make test`): a real 3-server NATS cluster with
## JetStream, a PostgreSQL, and ThingHub nodes on loopback.
cluster-test: $(STAMP)
	$(BIN)/pytest tests/cluster

## The long cluster crash test: rounds of SIGKILL of each ThingHub node and each NATS server in
## turn under MQTT and HTTP load for THINGHUB_CRASH_SECONDS (300); nothing acknowledged is lost.
THINGHUB_CRASH_SECONDS ?= 300
cluster-crash: $(STAMP)
	THINGHUB_CRASH_SECONDS=$(THINGHUB_CRASH_SECONDS) $(BIN)/pytest -m slow tests/cluster/test_cluster_crash.py

lint: $(STAMP)
	$(BIN)/ruff check thinghub tests bench
	$(BIN)/ruff format --check thinghub tests bench
	$(BIN)/mypy

## Benchmarks: ThingHub, and mosquitto beside it when installed; then the 1M-message backlog;
## then the cross-node scenarios (two clustered nodes on NATS beside one hub).
bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.backlog
	$(BIN)/python -m bench.cluster

## A million QoS 1 messages queued for offline sessions; restart time and memory under them.
bench-backlog: $(STAMP)
	$(BIN)/python -m bench.backlog

bench-quick: $(STAMP)
	$(BIN)/python -m bench --seconds 2 --runs 1 --devices 2000

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
