# GeoDiff: `make run` runs the whole workflow on the built-in synthetic atmosphere,
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: run test lint clean

$(BIN)/geodiff: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/geodiff
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

test: $(BIN)/geodiff
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q

lint: $(BIN)/geodiff
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results .snakemake
