# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)

.PHONY: install demo test test-fast clean-demo gpu-smoke

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# pretrain -> prune on the bundled digits data, offline, a few minutes on 2 CPU cores
demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash scripts/demo.sh

# the whole test suite (CPU, no downloads), one worker per core (tests/conftest.py splits the threads);
# `make test-fast` skips the end-to-end tests. Serial: `.venv/bin/python -m pytest -q`
XDIST := -n auto --dist worksteal
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

clean-demo:
	rm -rf runs/demo

# CUDA smoke test of every stage (DEVICE=cpu for a dry run); see README "GPU"
gpu-smoke: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash scripts/gpu_smoke.sh
