# Every target creates .venv and installs locvit into it when needed, so a fresh clone only needs
# python3 (>= 3.10) and pip access to the package registry.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locvit-installed
PYTEST_ARGS ?= -n 2

.PHONY: install test test-heavy demo lint readme clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing locvit and its test extras into $(VENV) (torch, torchvision, timm, ONNX, smp, pycocotools: several GB, minutes on a first install; pip's progress follows)"
	$(PY) -m pip install --progress-bar on -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not heavy"

# compile / torch.export / ONNX parity for every registered model (about 12 minutes on 2 cores; CI runs it)
test-heavy: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m heavy

demo: $(STAMP)
	$(PY) -m locvit demo --output runs/demo

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check src tests

readme: $(STAMP)
	$(PY) -m locvit models --recount --markdown --update-readme README.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
