# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv browser java wrk demo test lint format bench lock clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian's Chromium, for the tests that open the eval report and the search page in a real browser.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	test -x $(CHROMIUM) || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

# A headless Java runtime for METEOR (pycocoevalcap runs a Java program): imgsearch eval's
# caption figures, and its tests.
java:
	command -v java || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q default-jre-headless)

# Debian's wrk, the HTTP load generator of benchmarks/bench_serving.py and soak_serving.py.
wrk:
	command -v wrk || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q wrk)

demo: venv
	$(BIN)/imgsearch demo --serve

test: venv browser java
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python benchmarks/bench_index.py

# Re-pin requirements.txt from requirements.in in a throwaway venv.
lock:
	rm -rf /tmp/imgsearch-lock && $(PYTHON) -m venv /tmp/imgsearch-lock
	/tmp/imgsearch-lock/bin/pip install --quiet -r requirements.in
	(echo "# Pinned from requirements.in with 'make lock' (pip freeze of a fresh venv on Python 3.11)."; \
	 /tmp/imgsearch-lock/bin/pip freeze | grep -v -E "^(pip|setuptools|wheel)==") > requirements.txt

clean:
	rm -rf $(VENV) demo-out .pytest_cache
