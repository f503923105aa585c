# tfnegseq: `make demo` and `make test` are the two commands a new user needs.
# Both create .venv on first use (Python 3.11, pinned dependencies from pyproject.toml).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tfnegseq-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-slow bench table2 lint clean gpu-wheels

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; otherwise a no-op.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "tfnegseq needs Python 3.11, found " + sys.version)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -e ".[test,lint]"
	@touch $@

demo: setup
	$(BIN)/python -m tfnegseq.demo

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/bench_build_samples.py
	$(BIN)/python benchmarks/bench_input.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_sine.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_backbones.py
	$(BIN)/python benchmarks/bench_candidates.py
	$(BIN)/python benchmarks/bench_tapf_floor.py
	$(BIN)/python benchmarks/bench_tcn_kernels.py
	$(BIN)/python benchmarks/bench_embedding_updates.py
	$(BIN)/python benchmarks/bench_embedding_updates.py --xla clustered --dtype mixed_bfloat16

# The paper's Table 2 structure (4 settings x DIN/Transformer x 5 seeds) on MovieLens-100K
# (read from ML100K, never copied) and on the synthetic log. Resumable; writes
# docs/results/table2_<dataset>.{json,md,png}. About 40 min per dataset on 2 cores.
ML100K ?= ../shared/data/ml-100k
table2: setup
	$(BIN)/python -m tfnegseq.data.simulate --config configs/synthetic.yaml
	$(BIN)/python -m beam_jobs.build_samples --config configs/synthetic.yaml
	$(BIN)/python -m beam_jobs.build_samples --config configs/movielens_100k.yaml --set source.path=$(ML100K)
	$(BIN)/python -m tfnegseq.experiments.table2 --config configs/movielens_100k.yaml
	$(BIN)/python -m tfnegseq.experiments.table2 --config configs/synthetic.yaml

# Wheels for the GPU device machine (Python 3.12, JAX, no TensorFlow, no network):
# carried there in .gpu/ by benchmarks/gpu_run.sh's caller (see that script).
gpu-wheels: setup
	$(PIP) download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu \
	    keras==3.15.1 namex optree packaging

lint: setup
	$(BIN)/ruff check tfnegseq beam_jobs benchmarks tests
	$(BIN)/mypy tfnegseq

clean:
	rm -rf build runs .pytest_cache
