# Two commands: `make run` (the whole pipeline on the embedded default) and `make test`.
# Each creates .venv and installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
# Every pip call, including those pip makes for build dependencies, honours the pins.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: run test test-fast install clean server deploy worker demo browser

# Scheduled runs (README): a Prefect server on loopback, the deployments of prefect.yaml, a worker.
PREFECT_PORT ?= 4200
PREFECT_ENV := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
PREFECT_CLIENT := $(PREFECT_ENV) PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps vbench==0.1.5 pyiqa==0.1.16
	touch $@

run: $(STAMP)
	test -d .git || git init --quiet
	test -d .dvc || dvc init --quiet
	dcm pipeline
	dcm status

# Test processes side by side (pytest-xdist), one test file per process at a time: the integration tests
# spend most of their time in single-threaded subprocesses, so two cores run two files at once.
TEST_WORKERS ?= 2

test: $(STAMP) browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The demo page's test drives Debian's chromium through chromedriver (apt packages: root, as on CI).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		{ echo "make test: the demo page's test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver, as root)" >&2; exit 1; }

# The edit loop: unit and tiny-component tests only (no subprocess pipelines, no servers); about a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "fast and not integration"

# The registered students beside the teacher in a browser (after make run): http://127.0.0.1:7860 (params.yaml demo)
demo: $(STAMP)
	dcm demo

server: $(STAMP)
	$(PREFECT_ENV) prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: $(STAMP)
	$(PREFECT_CLIENT) prefect work-pool inspect dcm >/dev/null 2>&1 || \
		$(PREFECT_CLIENT) prefect work-pool create dcm --type process
	$(PREFECT_CLIENT) prefect deploy --all

worker: $(STAMP)
	$(PREFECT_CLIENT) prefect worker start --pool dcm

clean:
	rm -rf data .prefect mlflow.db mlartifacts .cache
