# Two commands matter: `make run` and `make test`. Both install whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

HOST ?= 127.0.0.1
PORT ?= 8000
export LITESTAR_APP ?= app.web.app:create_app
export HOST PORT

# uv from PATH, or bootstrapped into .tools/ with the machine's own Python.
UV = $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN = $(UV) run --frozen --no-sync
VENDOR := src/app/web/static/vendor

.PHONY: help install run web worker scheduler migrate test test-embedded test-services test-embedded-tagged test-services-tagged lint-tagged browser chaos lint bench assets clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.tools/bin/uv:
	@command -v uv >/dev/null 2>&1 || { echo "Installing uv into .tools/"; python3 -m venv .tools && .tools/bin/pip install --quiet uv; }

# Bytecode is compiled at install. Where PYTHONDONTWRITEBYTECODE is set (as on CI) Python never
# caches it, and every `litestar`, `dramatiq` or test process compiled its imports again
# (`litestar --help`: 5.3 s before, 2.0 s after).
.venv/.synced: pyproject.toml uv.lock | .tools/bin/uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

$(VENDOR)/.copied: node_modules/.package-lock.json
	mkdir -p $(VENDOR)/swagger-ui
	cp node_modules/htmx.org/dist/htmx.min.js $(VENDOR)/htmx.min.js
	cp node_modules/htmx-ext-sse/dist/sse.min.js $(VENDOR)/htmx-ext-sse.js
	cp node_modules/idiomorph/dist/idiomorph-ext.min.js $(VENDOR)/idiomorph-ext.js
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css \
	   node_modules/swagger-ui-dist/swagger-ui-standalone-preset.js $(VENDOR)/swagger-ui/
	@touch $@

.env:
	cp .env.example .env

assets: $(VENDOR)/.copied ## Install the npm packages and copy their files into the static folder.

install: .venv/.synced assets .env ## Install everything missing (uv, Python packages, npm packages).

migrate: install ## Apply pending database migrations.
	$(RUN) litestar database upgrade --no-prompt

# With REDIS_URL, app.supervisor runs the Procfile and starts again any process that dies (honcho would
# stop them all, the web app included).
run: migrate ## Serve everything at http://$(HOST):$(PORT) (web + workers + schedules; a process each with REDIS_URL).
	@if [ -n "$$REDIS_URL" ] || grep -qs '^REDIS_URL=.' .env; then \
	  exec $(RUN) python -m app.supervisor Procfile; \
	else \
	  exec $(RUN) litestar run --host $(HOST) --port $(PORT); \
	fi

web: migrate ## Serve the web app alone (services mode: workers run elsewhere).
	$(RUN) python -m app.web.serve

# The queues a `make worker` serves: `make worker QUEUES=tasks`, `QUEUES=mail`, `QUEUES=maintenance` (the
# Procfile runs one worker per queue, each with its own threads); by default one worker serves all three.
# It polls as WORKER_POLL_MS says (Dramatiq reads dramatiq_worker_timeout) and serves its metrics on
# WORKER_METRICS_PORT (9191; a second `make worker` on this machine needs another, 0 for none).
QUEUES ?= tasks mail maintenance
worker: install ## Run a Dramatiq worker for QUEUES (services mode; default: every queue).
	dramatiq_worker_timeout=$${WORKER_POLL_MS:-1000} WORKER_METRICS_PORT=$${WORKER_METRICS_PORT:-9191} \
	  $(RUN) dramatiq app.workers --queues $(QUEUES) --processes $${WORKER_PROCESSES:-1} --threads $${WORKER_THREADS:-8}

scheduler: install ## Run the periodiq scheduler (services mode).
	$(RUN) periodiq app.workers

lint: install ## ruff and mypy --strict on src/.
	$(RUN) ruff check src tests bench
	$(RUN) ruff format --check src tests bench
	$(RUN) mypy

# The two runs share nothing (embedded: SQLite and in-process workers; services: a database and
# Redis keys of their own) and mostly wait on processes they start, so they run side by side;
# each line of output says which run it comes from.
# Lint runs beside them (a cold mypy takes 10 s of CPU); any of the three failing fails `make test`.
test: install browser ## Lint, and run every test in embedded mode and against Postgres and Redis.
	$(MAKE) --no-print-directory -j3 lint-tagged test-embedded-tagged test-services-tagged

test-embedded-tagged test-services-tagged lint-tagged: %-tagged:
	@set -o pipefail; $(MAKE) --no-print-directory $* 2>&1 | sed -u 's/^/[$(subst test-,,$*)] /'

# Most tests wait on processes they started (a web app, workers, Chromium), so each run spreads its test
# files over pytest-xdist workers, each with its own var/ folder, database and Redis keys (tests/conftest.py).
# Files stay whole on one worker: their module fixtures are started once.
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set (as on CI): each xdist worker collects every
# test file (11 s of CPU with pytest's assertion rewriting, 5 s from its cache), and each of the ~200 processes
# the tests start compiles src/ again without one. The caches are git-ignored __pycache__ folders.
test-embedded test-services: export PYTHONDONTWRITEBYTECODE =
EMBEDDED_TEST_WORKERS ?= 2
SERVICES_TEST_WORKERS ?= 3
test-embedded: install browser
	env -u DATABASE_URL -u REDIS_URL TEST_MODE=embedded $(RUN) pytest -n $(EMBEDDED_TEST_WORKERS) --dist loadfile

test-services: install browser
	TEST_MODE=services $(RUN) pytest -n $(SERVICES_TEST_WORKERS) --dist loadfile

# The browser tests drive Debian's Chromium (Playwright downloads no browser). Without it they are
# skipped, or fail under CI=true.
CHROMIUM := /usr/bin/chromium
browser: ## Install Debian's Chromium for the browser tests when it is missing (as root, with apt).
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    || echo "Could not install chromium: the browser tests will be skipped (under CI=true they fail)."; \
	else \
	  echo "No $(CHROMIUM): the browser tests will be skipped (under CI=true they fail). Install it: sudo apt-get install chromium"; \
	fi

chaos: install ## Long fault runs: workers killed, Redis and Postgres restarted under load (needs initdb, redis-server).
	TEST_MODE=services $(RUN) pytest -m chaos tests/test_chaos.py

# The bench group adds the peer stack (FastAPI, Celery) that bench/ compares the service with; it is
# never in the production image (Containerfile: --no-dev, and bench is not a default group).
# The API read benchmark drives its servers with wrk (bench/api_list.py); without it that section says so.
bench: install ## Run the benchmarks and write docs/benchmarks.md (installs wrk with apt when root).
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }; } \
	  || echo "No wrk: the API read benchmark will not run. Install it: sudo apt-get install wrk"
	$(UV) sync --frozen --compile-bytecode --group bench
	$(RUN) python -m bench

clean: ## Remove installed and generated files (keeps var/).
	rm -rf .venv .tools node_modules $(VENDOR) .pytest_cache .mypy_cache .ruff_cache
