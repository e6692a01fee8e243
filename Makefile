# The waiting room: `make run` sets everything up and runs it; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/waiting/v1/*.proto)

.PHONY: help setup proto run demo bench bench-ghz smoke go-tools buf-lint migrate test test-sqlite test-postgres lint format broker postgres stop clean

help:
	@echo "make run      set up (venv, stubs, broker jars) and run broker + token_api + activator"
	@echo "make test     run the tests against a real Kafka broker, on SQLite and PostgreSQL"
	@echo "make setup    only the set-up part of make run: venv, dependencies, stubs, broker jars"
	@echo "make demo     a crowd of simulated users through the real API (DEMO_ARGS=--help)"
	@echo "make bench    measure against the targets; BENCH_ARGS=--full for the 1M line"
	@echo "make lint     ruff format --check, ruff check, mypy --strict (code and tests)"
	@echo "make proto    regenerate the Python stubs from protos/"
	@echo "make stop     stop a running make run, and the broker and PostgreSQL of the scripts"
	@echo "make clean    stop, then delete .run/ (database, broker data, admin credential) and gen/"

$(BIN)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

gen/.stamp: $(PROTOS) $(BIN)/.deps
	rm -rf gen && mkdir -p gen
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=gen --grpc_python_out=gen --mypy_out=quiet:gen --mypy_grpc_out=quiet:gen \
		$(PROTOS)
	touch gen/waiting/__init__.py gen/waiting/v1/__init__.py
	$(BIN)/pip install -q -e . --no-deps
	touch $@

proto: gen/.stamp

setup: gen/.stamp
	scripts/kafka.sh fetch

migrate: setup
	$(BIN)/python -m waiting_core.migrate

run: setup
	scripts/run.sh

demo: setup
	$(BIN)/python -m tools.demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python -m tools.bench $(BENCH_ARGS)

bench-ghz: setup
	test -x "$$(go env GOPATH)/bin/ghz" || go install github.com/bojand/ghz/cmd/ghz@v0.120.0
	$(BIN)/python -m tools.bench_ghz $(GHZ_ARGS)

go-tools:
	scripts/go_tools.sh

smoke: setup go-tools
	$(BIN)/python -m tools.smoke

buf-lint: go-tools
	"$$(go env GOPATH)/bin/buf" lint
	if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then \
		"$$(go env GOPATH)/bin/buf" breaking --against '.git#ref=HEAD~1'; fi

test: setup
	@scripts/postgres.sh install || echo "make test: could not install PostgreSQL (needs root);" \
		"its tests are skipped here and fail under CI=true"
	$(BIN)/pytest

test-sqlite: setup
	$(BIN)/pytest -k "not postgres"

test-postgres: setup
	$(BIN)/pytest -k "postgres"

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

broker: setup
	scripts/kafka.sh start

postgres:
	scripts/postgres.sh install
	scripts/postgres.sh start

stop:
	scripts/run.sh stop
	scripts/kafka.sh stop
	scripts/postgres.sh stop

clean: stop
	scripts/postgres.sh remove
	rm -rf gen .run .pytest_cache .mypy_cache .ruff_cache
