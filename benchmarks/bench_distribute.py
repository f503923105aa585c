"""Benchmark (issue 16): data-parallel training throughput on this machine's devices.

Trains the synthetic preset's CTR model (DIN + TAPF, d = 64, L = 100; the samples of
`configs/synthetic.yaml`, built first if missing) with `python -m tfnegseq.train`, one
process per run, in these variants, all at the same global batch (`--batch`, 512):

| variant | backend | train.distribution | devices |
| --- | --- | --- | --- |
| tf_one | TensorFlow | none (XLA) | the CPU as one device |
| tf_one_noxla | TensorFlow | none, jit_compile false | the CPU as one device |
| tf_mirrored_2 | TensorFlow | mirrored (no XLA: tf.distribute) | 2 logical CPU devices |
| jax_one | JAX | none | 1 host device |
| jax_data_parallel_2 | JAX | data_parallel | 2 forced host devices |
| jax_model_parallel_2 | JAX | model_parallel (item rows over 2) | 2 forced host devices |
| jax_processes_2 | JAX | data_parallel, 2 processes on localhost (gloo) | 1 each |

Each run trains `--epochs` epochs of `--steps` steps; its examples/s excludes the first
epoch (compilation), as `tfnegseq.train` reports it. `--rounds` rounds run every variant
in turn (the order reversed each round, so background load falls on all alike); the
result is each variant's median examples/s and its median per-round ratio to its
backend's one-device run (tf_mirrored_2 against tf_one_noxla as well: both without XLA).

Two logical CPU devices share the same 2 cores, so no speed-up is expected here: the
numbers measure the cost of the distribution machinery (the replica split, the gradient
all-reduce, gloo between processes), not scaling. On a machine with several GPUs the same
command measures the real thing.

    python benchmarks/bench_distribute.py          # -> benchmarks/results/distribute.json
    python benchmarks/bench_distribute.py --steps 10 --rounds 1 --out /tmp/d.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchmarks._machine import machine, write_result  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "synthetic.yaml")
VARIANTS = {
    "tf_one": ("tensorflow", []),
    "tf_one_noxla": ("tensorflow", ["train.jit_compile=false"]),
    "tf_mirrored_2": ("tensorflow", ["train.distribution=mirrored", "train.cpu_devices=2"]),
    "jax_one": ("jax", []),
    "jax_data_parallel_2": ("jax", ["train.distribution=data_parallel", "train.cpu_devices=2"]),
    "jax_model_parallel_2": ("jax", ["train.distribution=model_parallel", "train.cpu_devices=2",
                                     "train.model_shards=2"]),
    "jax_processes_2": ("jax", ["train.distribution=data_parallel"]),
}
BASELINE = {"tf_mirrored_2": ("tf_one", "tf_one_noxla"), "jax_data_parallel_2": ("jax_one",),
            "jax_model_parallel_2": ("jax_one",), "jax_processes_2": ("jax_one",)}


def _env(backend: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERAS_DISTRIBUTION_", "XLA_FLAGS"))}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(name: str, sets: list[str], run_dir: str) -> float:
    """One training run of a variant; its examples/s."""
    backend, extra = VARIANTS[name]
    args = [a for s in sets + extra + [f"train.run_dir={run_dir}"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "tfnegseq.train", "--config", CONFIG, *args]
    if name == "jax_processes_2":
        port = _port()
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=_env(
            backend, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(i),
            JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")) for i in range(2)]
        errors = [p.communicate(timeout=1800)[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{name} failed:\n{errors[0][-3000:]}\n{errors[1][-3000:]}")
    else:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                              env=_env(backend))
        if done.returncode:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return float(json.load(f)["train_examples_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated variants")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "distribute.json"))
    args = parser.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]

    from tfnegseq.config import load_config

    cfg = load_config(CONFIG)
    samples = os.path.join(REPO, cfg.output.dir)
    if not os.path.exists(os.path.join(samples, "manifest.json")):
        subprocess.run([sys.executable, "-m", "tfnegseq.data.simulate", "--config", CONFIG],
                       cwd=REPO, check=True)
        subprocess.run([sys.executable, "-m", "tfnegseq.data.job", "--config", CONFIG],
                       cwd=REPO, check=True)
    sets = [f"output.dir={samples}", f"train.batch_size={args.batch}",
            f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}",
            "train.export=false", "train.keep_checkpoints=0"]
    rates: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            got = {}
            for name in order:
                t = time.perf_counter()
                got[name] = run(name, sets, os.path.join(tmp, f"{name}_{r}"))
                rates[name].append(got[name])
                print(f"round {r + 1}: {name}: {got[name]:.0f} examples/s "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
            for name, bases in BASELINE.items():
                for base in bases:
                    if name in got and base in got:
                        ratios.setdefault(f"{name}/{base}", []).append(got[name] / got[base])
    result = {
        "benchmark": "distribute",
        "config": {"preset": "configs/synthetic.yaml", "batch": args.batch,
                   "steps": args.steps, "epochs": args.epochs, "rounds": args.rounds},
        "examples_per_second": {n: {"median": statistics.median(v), "rounds": v}
                                for n, v in rates.items()},
        "ratios": {k: {"median": statistics.median(v), "rounds": v} for k, v in ratios.items()},
        "machine": machine(),
        "note": "2 logical devices share 2 cores: the ratios are the distribution's "
                "overhead on one CPU, not scaling",
    }
    write_result(result, args.out)
    print(json.dumps({k: round(v["median"], 3) for k, v in result["ratios"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
