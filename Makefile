# Two commands do all set-up: `make demo` and `make test`. Both call `make setup` first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.nbdt-setup
DEMO_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1

.PHONY: setup system-deps demo test lint format bench clean

setup: $(STAMP)

# Debian's WordNet 3.0, Fashion-MNIST and Chromium (for the browser tests), where apt-get runs as root.
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  need=""; for p in wordnet-base wordnet-sense-index dataset-fashion-mnist chromium; do \
	    dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	  if [ -n "$$need" ]; then \
	    echo "apt-get install$$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need; \
	  fi; \
	else echo "skipping Debian packages (needs apt-get as root): see README for WordNet on other systems"; fi

$(STAMP): pyproject.toml Makefile
	$(MAKE) system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/nbdt-train --arch resnet18 --dataset fashion-mnist --output $(DEMO_DIR) \
	  --warmup-epochs 1 --epochs 1 --subset 12000 --batch-size 128
	$(VENV)/bin/nbdt-explain --checkpoint $(DEMO_DIR)/best.pt --dataset-samples 4 --html $(DEMO_DIR)/explanations.html
	@echo "demo outputs in $(DEMO_DIR): hierarchy.html, explanations.html, metrics.jsonl, best.pt"

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) scripts/bench_rules.py

clean:
	rm -rf $(VENV) build *.egg-info runs
