# Each target sets itself up: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlzoo-installed
WORDNET_DIR ?= /usr/share/wordnet
# root installs Debian packages directly; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps clean

# WordNet 3.0 database files for the text engine's `replace` and `synonym` generators
system-deps:
	@test -f $(WORDNET_DIR)/data.noun || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wordnet-base; }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: system-deps $(STAMP)

demo: system-deps $(STAMP)
	$(PY) train.py fit --config configs/fsc_clip.yaml

test: system-deps $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf runs lightning_logs .pytest_cache
