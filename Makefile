# Two commands for a newcomer: `make demo` (the main job on the embedded defaults: SQLite and a
# local object store under $(DEMO_DIR), no servers) and `make test` (the whole suite). Both set
# up their own virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

DEMO_DIR ?= cxr-data/demo
CXR := CXR_DATA_DIR=$(DEMO_DIR) TF_CPP_MIN_LOG_LEVEL=3 $(VENV)/bin/cxr

.PHONY: install test lint format clean demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,dicom]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

# Train a small CNN on the 41-image sample shipped in samples/ (split by patient), publish it,
# then score the sample as an archive with explanations for the positives, and summarise.
demo: install
	$(CXR) train --data samples/cxr-sample/manifest.csv --arch simple_cnn --image-size 96 \
		--epochs 40 --patience 10 --learning-rate 0.0003 --batch-size 8 --name demo --publish \
		--alias production
	$(CXR) score samples/cxr-sample --model demo@production --explain positives --wait \
		--report $(DEMO_DIR)/report.html
	@echo "open $(DEMO_DIR)/report.html — research use only, not for clinical decisions"

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache cxr-data
