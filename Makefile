# Developer shortcuts; each target wraps a script so CI and people run the same thing.
.DEFAULT_GOAL := help
.PHONY: help bootstrap run test lint fmt bench services-up services-down

VENV := .venv/bin

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

bootstrap: ## create/refresh .venv with backuphub[dev]
	scripts/dev/bootstrap.sh

run: bootstrap ## run the service locally (backuphub serve)
	$(VENV)/backuphub serve

test: ## the full test command: services, lint, types, pytest
	scripts/dev/test.sh

lint: bootstrap ## ruff check, ruff format --check, mypy
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

fmt: bootstrap ## apply ruff fixes and formatting
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

bench: bootstrap ## run the benchmarks
	$(VENV)/python -m benchmarks

services-up: ## start local PostgreSQL and Kafka on 127.0.0.1
	deploy/local/postgres.sh start
	deploy/local/kafka.sh start

services-down: ## stop local Kafka and PostgreSQL
	deploy/local/kafka.sh stop
	deploy/local/postgres.sh stop
