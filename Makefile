# The two README commands, and the set-up both share with .ci/run.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: env test lint demo

env:
	bash tools/setup_env.sh

lint: env
	$(PY) -m ruff check .

test: env lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

demo: env
	$(PY) tools/run_demo.py $(ARGS)
