# geomol: `make demo` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch; pyproject leaves torch unpinned for users with GPUs.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) train.py experiment=demo
	mkdir -p outputs
	$(PY) -m geomol.generate ckpt=pretrained/propmolflow_qm9_gap_cpu/model.ckpt num_molecules=24 output=outputs/demo_molecules.sdf condition.gap=6.8

test: setup
	$(PY) -m pytest -q --durations=15

lint: setup
	$(PY) -m ruff check geomol tests bench train.py

bench: setup
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) outputs
