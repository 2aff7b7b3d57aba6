# vitx: two commands on a fresh machine.
#   make train   installs (once) and trains a ViT on the real digits scans
#   make test    installs (once) and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/vit_digits.py
WORKDIR ?= workdirs/vit_digits
DATA_DIR ?= data/tfds
ARGS ?=

.PHONY: install train test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/vitx train --config $(CONFIG) --workdir $(WORKDIR) --config.data_dir=$(DATA_DIR) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 3 --dist loadgroup tests

lint: $(STAMP)
	$(BIN)/ruff check vitx tests configs scripts

bench: $(STAMP)
	$(BIN)/vitx bench --config $(CONFIG) --config.data_dir=$(DATA_DIR)

clean:
	rm -rf $(VENV) workdirs
