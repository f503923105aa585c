#!/usr/bin/env bash
# Issue 5's GPU measurement, on a lent device machine: JAX with CUDA, Python 3.12, no
# TensorFlow, no network (../shared/docs/GPU.md). Keras and the few wheels it needs
# beyond what that machine has travel in .gpu/ (git-ignored).
#
#   here:   make gpu-wheels                      # downloads them into .gpu/
#   there:  the device tool's `run`, carry [".gpu"], command `bash benchmarks/gpu_run.sh`
#
# Extra arguments go to benchmarks/bench_train_jax.py. Writes train_jax_gpu.json to $OUT
# (the device tool's output folder) or, without $OUT, to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-index --find-links .gpu keras namex optree packaging
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
out_dir="${OUT:-benchmarks/results}"
KERAS_BACKEND=jax python benchmarks/bench_train_jax.py \
    --out "$out_dir/train_jax_$(python -c 'import jax; print(jax.devices()[0].platform)').json" "$@"
