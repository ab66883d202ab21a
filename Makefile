# The two commands of the README quick start, each doing its own set-up:
#   make demo   the whole pipeline on the embedded demo dataset
#   make test   the test suite
#   make lint   formatting and lint checks (make format fixes what it can)
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
export PATH := $(BIN):$(PATH)

.PHONY: demo test test-all venv lint format report lock clean

$(STAMP): envs/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install --quiet -r envs/requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) all

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow
	$(BIN)/ruff check --fix .

report: $(STAMP)
	$(BIN)/snakemake --report report.html

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable > envs/requirements.txt

clean:
	rm -rf results resources logs .snakemake report.html
