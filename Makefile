# keypointdet: `make train` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-all benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

train: install  ## train the default (CenterNet ResNet-18 on the embedded dataset); extra Hydra overrides in ARGS
	$(BIN)/python train.py $(ARGS)

test: install  ## the test suite without the slow tests
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: install
	$(BIN)/python -m pytest $(ARGS)

benchmark: install
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) logs .pytest_cache
