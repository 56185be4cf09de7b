# Two entry points: `make demo` (set up, ask the shipped model a question) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Modules that must run on the device's Python: 3.6 (JetPack 4.6, the TX2; dataclasses from its backport) and up.
DEVICE_SIDE := elma/__init__.py elma/cli.py elma/cli_train.py elma/ask_cli.py elma/cli_exit.py elma/errors.py elma/fsutil.py elma/paths.py elma/tokenization.py \
               elma/data/squad.py elma/data/features.py elma/metrics elma/runtime elma/power elma/bench \
               elma/offload/__init__.py elma/offload/queue.py elma/offload/client.py elma/offload/split.py \
               elma/offload/split_ask.py elma/doctor elma/update elma/export/__init__.py elma/export/tensorrt_build.py

# A Python 3.6 for the device-side check against a real 3.6 (pyenv's where there is one).
PY36 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.6*/bin/python) $(shell command -v python3.6))

.PHONY: setup demo test lint device36 slow clean

$(BIN)/elma: setup.cfg pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e '.[dev]'
	touch $@

setup: $(BIN)/elma

demo: setup
	$(BIN)/elma demo

lint: setup
	$(BIN)/ruff check elma tests benchmarks
	$(BIN)/vermin --target=3.6- --backport dataclasses --eval-annotations --violations --no-tips --quiet $(DEVICE_SIDE)
	$(BIN)/hadolint Dockerfile.l4t

test: setup lint
	$(BIN)/python -m pytest -q -m "not slow"
	$(MAKE) --no-print-directory device36

# The device side on Python 3.6 (JetPack 4.6), answer for answer against this Python: tests/device36/check.sh.
device36: setup
	@if [ -n "$(PY36)" ]; then tests/device36/check.sh $(PY36) $(BIN); \
	else echo "device36: skipped, no Python 3.6 on this machine (set PY36=/path/to/python3.6)"; fi

slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .venv36 build *.egg-info
