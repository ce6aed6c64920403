# Two commands set up a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --doctest-modules tests tetra_lightning

demo: $(STAMP)
	$(PY) -m tetra_lightning.demo

lint: $(STAMP)
	$(PY) -m ruff check tetra_lightning tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
