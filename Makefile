# flip-imaging: two commands for a newcomer.
#   make demo   install what is needed, then run the main job end to end on embedded defaults
#   make test   install what is needed, then run the whole test suite (SQLite and PostgreSQL)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := dcmtk orthanc
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-packages lint bench clean

demo: install
	$(BIN)/flip-imaging demo

test: install
	$(BIN)/pytest

install: system-packages $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Real DICOM peers for the tests and the demo: DCMTK (storescu, echoscu, findscu, movescu) and Orthanc.
system-packages:
	@if [ ! -x /usr/bin/storescu ] || [ ! -x /usr/sbin/Orthanc ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

lint: install
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/deid/run.py
	$(BIN)/python bench/archive/run.py
	$(BIN)/python bench/ingest/run.py
	$(BIN)/python bench/convert/run.py

clean:
	rm -rf $(VENV) flip-data flip-demo .pytest_cache
