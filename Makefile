# Two commands set up a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) postgres
	$(PY) -m pytest -q --doctest-modules tests tetra_lightning

# PostgreSQL server binaries for tests/test_postgres_workers.py (Debian's `postgresql` package). Never fails the
# build: where apt is missing or not allowed, those tests are skipped with the reason.
postgres:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  command -v apt-get >/dev/null 2>&1 && $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	} || echo "PostgreSQL could not be installed: tests/test_postgres_workers.py will be skipped."

# Offline on scikit-learn's digits; writes demo_out/. e.g. make demo DEMO_ARGS="--data cifar10 --data-dir DIR"
demo: $(STAMP)
	$(PY) -m tetra_lightning.demo $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check tetra_lightning tests benchmarks examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
