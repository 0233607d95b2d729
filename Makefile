# geomol: `make demo` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch; pyproject leaves torch unpinned for users with GPUs.
TORCH  ?= torch==2.13.0

.PHONY: setup demo demo-property test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# PropMolFlow: train a small model for a few minutes (a fresh run each time: the run directory is cleared,
# since train.py resumes from a run directory's last.ckpt), sample from it, then from the shipped checkpoint.
DEMO     := outputs/demo
DEMO_GAP := 6.8

demo: setup
	rm -rf $(DEMO)/propmolflow
	$(PY) train.py experiment=propmolflow_demo hydra.run.dir=$(DEMO)/propmolflow
	$(PY) -m geomol.generate ckpt=$(DEMO)/propmolflow/checkpoints/last.ckpt num_molecules=64 \
		output=$(DEMO)/generated.sdf condition.gap=$(DEMO_GAP)
	$(PY) -m geomol.generate ckpt=pretrained/propmolflow_qm9_gap_cpu/model.ckpt num_molecules=64 \
		output=$(DEMO)/pretrained.sdf condition.gap=$(DEMO_GAP)

# SchNet on 6,000 QM9 molecules (HOMO), about a minute: prints the test MAE in meV.
demo-property: setup
	$(PY) train.py experiment=demo

test: setup
	$(PY) -m pytest -q --durations=15

lint: setup
	$(PY) -m ruff check geomol tests bench train.py

bench: setup
	# machine.py is a helper; equal_budget.py and nve_md.py need run folders / a model (see their docstrings)
	for script in bench/*.py; do case $$script in */machine.py|*/equal_budget.py|*/nve_md.py|*/propmolflow_novelty.py) continue;; esac; \
		$(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) outputs
