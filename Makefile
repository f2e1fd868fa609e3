# The two README commands, and the set-up both share with .ci/run.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow and not gpu"
# pytest-xdist: one test process per core (at most 4), one torch thread each; the
# recipe tests are subprocess trainings that keep a core busy each. 0: in one process.
TEST_WORKERS ?= auto

.PHONY: env test lint demo

env:
	bash tools/setup_env.sh

lint: env
	$(PY) -m ruff check .

test: env lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses 4 \
		--dist worksteal $(PYTEST_ARGS)

demo: env
	$(PY) tools/run_demo.py $(ARGS)
