# Two commands do all set-up: `make demo` and `make test` (`make test-fast` while developing).
# All of them call `make setup` first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.nbdt-setup
DEMO_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1

.PHONY: setup system-deps demo test test-fast docs lint format bench clean

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
	$(PIP) install -q -e '.[test,report,evidence,deploy,docs]'
	touch $(STAMP)

# resnet18 from scratch on Fashion-MNIST (CPU: about 10 minutes on 2 cores): cross-entropy
# warm-up, hierarchy induced from the head, soft tree supervision; 4 test images explained by the
# trainer (PNGs in images/), the evaluation report (eval.json, report.html), then the same PNGs
# by nbdt-explain.
demo: setup
	$(VENV)/bin/nbdt-train --arch resnet18 --dataset fashion-mnist --output $(DEMO_DIR) \
	  --warmup-epochs 2 --epochs 1 --subset 15000 --explain 4 --overwrite
	$(VENV)/bin/nbdt-explain --checkpoint $(DEMO_DIR)/best.pt --top-k 3 --evidence \
	  --examples $(DEMO_DIR)/node_examples.npz \
	  -o $(DEMO_DIR)/explain-cli.html $(DEMO_DIR)/images/test-*.png
	@echo "demo outputs in $(abspath $(DEMO_DIR)): hierarchy.html, explanations.html,"\
	  "explain-cli.html, node_examples.npz, metrics.jsonl, hierarchy.json, best.pt, last.pt"
	@echo "evaluation report (nbdt-eval's metrics of the final model): $(abspath $(DEMO_DIR))/report.html"

test: setup
	$(PY) -m pytest -q

# The quick loop while developing: no slow and no browser tests, a tighter limit per test.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser" --timeout 120

# The documentation site (mkdocs.yml), offline, into site/; warnings are errors.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) scripts/bench_rules.py

clean:
	rm -rf $(VENV) build site *.egg-info
