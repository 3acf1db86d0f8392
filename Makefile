# The whole set-up on a fresh machine is `make demo` or `make test`: each (re)builds .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Exact versions this repository is tested with; pyproject.toml keeps the looser ranges for users.
CONSTRAINTS := constraints.txt
PYTEST_ARGS ?=

.PHONY: venv demo demo-core demo-cosa demo-gato demo-evol test lint format bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main jobs end to end on embedded defaults: the shared transformer on a built-in task
# (~2-3 min on CPU), Co-SA on a synthetic IEMOCAP-layout dataset (~1 min), the mini-Gato
# (expert data -> training -> prompted evaluation, ~4 min) and AgentEvol on Maze (~3.5 min).
demo: demo-core demo-cosa demo-gato demo-evol

demo-core: $(STAMP)
	$(PY) -m core_jax.demo --workdir runs/demo

demo-cosa: $(STAMP)
	$(PY) -m cosa_jax.demo --workdir runs/cosa_demo

demo-gato: $(STAMP)
	$(PY) -m gato_jax.demo --workdir runs/gato_demo

demo-evol: $(STAMP)
	$(PY) -m evol_jax.demo --workdir runs/evol_demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -m "not slow" -n 2 --timeout 900 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run --out benchmarks/results

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
