# Two entry points: `make demo` (set up, ask the shipped model a question) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Modules that must run on the device's Python: 3.6 (JetPack 4.6, the TX2; dataclasses from its backport) and up.
DEVICE_SIDE := elma/__init__.py elma/ask_cli.py elma/cli_exit.py elma/errors.py elma/fsutil.py elma/paths.py elma/tokenization.py \
               elma/data/squad.py elma/data/features.py elma/metrics elma/runtime elma/power elma/bench \
               elma/offload/__init__.py elma/offload/queue.py elma/offload/client.py elma/offload/split.py \
               elma/offload/split_ask.py elma/doctor elma/update

.PHONY: setup demo test lint slow clean

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

slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
