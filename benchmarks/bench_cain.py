"""Benchmark (issue 14): the cost of CAIN's context extraction over lifelong sequences.

At lifelong lengths `--lengths` (500, 1,000, 2,000), batch `--batch` (256) and d =
`--dim` (64), training steps of `tfnegseq.models.CainModel` (the lifelong path only:
`short_term: false`, so the numbers are the lifelong modelling's) in six variants:

| variant | config |
| --- | --- |
| no_tcn | `context: none` (LAP on the raw items: the paper's -1 point, Figure 5) |
| tcn_1 | one TCN layer (cl = 7) + LAP ("CAIN w/o MSIA and PEG") |
| msia_4 | 4-layer MSIA (strides 1, 4, 4, 4) + LAP ("CAIN w/o PEG") |
| msia_4_peg | the same with PEG on every layer (CAIN) |
| gru | a bidirectional GRU in place of the TCN (Table 1) |
| self_attention | one Transformer block over all N items in place of the TCN (Table 1) |
| msia_4_peg_first | (not run by default) msia_4 with PEG on the first TCN layer only |
| msia_4_peg_later | (not run by default) msia_4 with PEG on the three later layers only |

The last two split PEG's cost between layer 1 (stride 1, N outputs) and the later
layers (stride 4: N / 4, N / 16, N / 64 outputs); each PEG layer also has its own
generator (64 x 61,440 weights at d = 64, cl = 7).

LAP's (k1, k2) = (256, 64); PEG reads the user id embedding; Adam 1e-3. `--mode xla`
(default): float32, XLA (`jit_compile`, the `train:` default). `--mode bf16`:
`mixed_bfloat16` with `train.auto_clustering` (XLA fuses everything but the matmuls,
which run on oneDNN and, on CPUs with AMX, on AMX; `tfnegseq.runtime`), the faster way
to train on such CPUs. Inputs are random ids, every user with a full lifelong list (the
worst case), random labels.

Timing: one worker process per length builds every variant, compiles and warms each
(timed apart), then runs `--rounds` rounds of `--steps` steps of each variant's Keras
train function, the variant order reversed every round so background load hits all
alike; reported: ms per step and examples/s (medians over rounds) and every ratio to
no_tcn and msia_4 (medians of the per-round ratios).

Peak memory: one process per (variant, length) that compiles, runs a warm-up step,
then samples its resident set size every 5 ms during `--memory-steps` steps: the peak
RSS during training steps and the process's high-water mark (`ru_maxrss`, which
includes XLA compilation). Variants whose activations cannot fit are skipped with the
estimate that ruled them out (self-attention's `[B, heads, N, N]` scores: 4 copies at
N = 2,000, B = 256 are 33 GB).

Goals (issue 14): at N = 2,000, msia_4 < 2x the step time of no_tcn, msia_4_peg < 1.3x
msia_4; the JSON also records whether the TCN is the cheapest context extractor (the
paper's claim): tcn_1's step time below gru's and self_attention's.

    python benchmarks/bench_cain.py                       # -> benchmarks/results/cain.json
    python benchmarks/bench_cain.py --mode bf16 --out benchmarks/results/cain_bf16.json
    python benchmarks/bench_cain.py --lengths 64 --batch 16 --steps 1 --rounds 1 \\
        --out /tmp/cain_smoke.json                         # smoke run (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from tfnegseq.provenance import git_commit  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "no_tcn": {"context": "none", "peg_layers": "none"},
    "tcn_1": {"msia_layers": 1, "peg_layers": "none"},
    "msia_4": {"msia_layers": 4, "peg_layers": "none"},
    "msia_4_peg": {"msia_layers": 4, "peg_layers": "all"},
    "gru": {"context": "gru", "msia_layers": 1, "peg_layers": "none"},
    "self_attention": {"context": "self_attention", "msia_layers": 1, "peg_layers": "none"},
    "msia_4_peg_first": {"msia_layers": 4, "peg_layers": "first"},
    "msia_4_peg_later": {"msia_layers": 4, "peg_layers": "later"},
}
DEFAULT_VARIANTS = ("no_tcn", "tcn_1", "msia_4", "msia_4_peg", "gru", "self_attention")
ITEMS, USERS = 100_000, 10_000
HEADS = 2


def model_config(variant: str, length: int, dim: int) -> dict[str, Any]:
    return {"embedding_dim": dim, "short_term": False, "lifelong_length": length,
            "major_attention": "lap", "lap_top_k": [256, 64], "context_length": 7,
            "lifelong_heads": HEADS, "lifelong_attention_dim": dim, "peg_units": 64,
            "mlp_units": [200, 80], **VARIANTS[variant]}


def estimated_gib(variant: str, length: int, batch: int) -> float:
    """Activation estimate that decides skipping: self-attention's scores, softmax and
    their gradients (4 x [B, heads, N, N] float32); the others are O(B N d)."""
    if variant != "self_attention":
        return 0.0
    return 4 * batch * HEADS * length * length * 4 / 2**30


def available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def build(variant: str, length: int, args: argparse.Namespace):
    import keras
    import numpy as np

    from tfnegseq.models.cain import CainModel

    keras.utils.set_random_seed(0)
    peg = VARIANTS[variant]["peg_layers"] != "none"
    model = CainModel({"item_id": ITEMS, "user_id": USERS}, model_config(variant, length, args.dim),
                      profile_features=["user_id"] if peg else [], name=f"cain_{variant}")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=args.mode == "xla")
    rng = np.random.default_rng(0)
    b = args.batch
    x = {"user_id": rng.integers(1, USERS, b), "item_id": rng.integers(1, ITEMS, b),
         "life_item_id": rng.integers(1, ITEMS, (b, length)),
         "life_order": np.tile(np.arange(1, length + 1), (b, 1)),
         "life_polarity": rng.integers(-1, 2, (b, length)),
         "life_value": rng.uniform(0, 1, (b, length)).astype("float32")}
    y = rng.integers(0, 2, b).astype("float32")
    import tensorflow as tf

    data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    iterator = iter(data)
    model.make_train_function()
    return model, iterator


def step(model, iterator, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        logs = model.train_function(iterator)
    float(logs["loss"])  # wait for the last step
    return time.perf_counter() - start


def time_worker(args: argparse.Namespace) -> dict[str, Any]:
    length = args.worker_length
    variants = [v for v in args.variants if v not in args.skip]
    built, compile_s = {}, {}
    for v in variants:
        start = time.perf_counter()
        built[v] = build(v, length, args)
        step(*built[v], 1)
        compile_s[v] = time.perf_counter() - start
        step(*built[v], args.warmup)
        print(f"  N={length} {v}: built and compiled in {compile_s[v]:.1f} s", flush=True)
    rounds: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            rounds[v].append(step(*built[v], args.steps) / args.steps)
        print(f"  N={length} round {r + 1}/{args.rounds}: "
              + ", ".join(f"{v} {rounds[v][-1] * 1e3:.0f} ms" for v in variants), flush=True)
    out: dict[str, Any] = {"compile_seconds": compile_s, "variants": {}}
    for v in variants:
        ms = statistics.median(rounds[v]) * 1e3
        out["variants"][v] = {"ms_per_step": round(ms, 1),
                              "examples_per_second": round(args.batch / (ms / 1e3), 1),
                              "rounds_ms": [round(t * 1e3, 1) for t in rounds[v]]}
    ratios = {}
    for base in ("no_tcn", "msia_4"):
        if base not in rounds:
            continue
        for v in variants:
            if v != base:
                ratios[f"{v}/{base}"] = round(statistics.median(
                    a / b for a, b in zip(rounds[v], rounds[base], strict=True)), 3)
    out["ratios"] = ratios
    return out


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    model, iterator = build(args.worker_variant, args.worker_length, args)
    step(model, iterator, 1)
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    step(model, iterator, args.memory_steps)
    done.set()
    thread.join()
    return {"peak_rss_gib_during_steps": round(peak[0] / 2**30, 3),
            "rss_gib_before_steps": round(before / 2**30, 3),
            "max_rss_gib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                         / 2**20, 3)}


def run_worker(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    out = os.path.join(args.scratch, f"worker_{time.monotonic_ns()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), *argv_of(args), *extra, "--worker-out", out]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run(cmd, env=env, text=True, stdout=None, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    with open(out) as f:
        return json.load(f)


def argv_of(args: argparse.Namespace) -> list[str]:
    return ["--mode", args.mode, "--batch", str(args.batch), "--dim", str(args.dim), "--steps", str(args.steps),
            "--rounds", str(args.rounds), "--warmup", str(args.warmup),
            "--memory-steps", str(args.memory_steps), "--variants", ",".join(args.variants),
            "--scratch", args.scratch]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="500,1000,2000")
    p.add_argument("--mode", choices=("xla", "bf16"), default="xla")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "cain.json"))
    p.add_argument("--scratch", default="/tmp/bench_cain")
    p.add_argument("--worker-length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-variant", help=argparse.SUPPRESS)
    p.add_argument("--worker-skip", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    os.makedirs(args.scratch, exist_ok=True)
    if args.worker_out:  # a worker process
        if args.mode == "bf16":
            import keras

            from tfnegseq.runtime import enable_auto_clustering

            enable_auto_clustering()  # before the first tf.function
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        args.skip = [v for v in args.worker_skip.split(",") if v]
        result = (memory_worker(args) if args.worker_variant else time_worker(args))
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return 0

    from _machine import machine, write_result

    lengths = [int(n) for n in args.lengths.split(",")]
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "cain", "mode": args.mode, "machine": machine(), "lengths": lengths,
        "batch": args.batch, "dim": args.dim, "steps": args.steps, "rounds": args.rounds,
        "variants": {v: model_config(v, 0, args.dim) | {"lifelong_length": "N"}
                     for v in args.variants},
        "load_average_start": os.getloadavg(),
        "commit": git_commit(),  # "+dirty" with local changes
        "by_length": {},
    }
    for n in lengths:
        skip, skipped = [], {}
        for v in args.variants:
            need = estimated_gib(v, n, args.batch)
            if need and need > 0.8 * available_gib():
                skip.append(v)
                skipped[v] = (f"estimated {need:.1f} GiB of attention activations > 80% of the "
                              f"{available_gib():.1f} GiB available")
        print(f"N={n}: timing {[v for v in args.variants if v not in skip]}", flush=True)
        entry = run_worker(args, ["--worker-length", str(n), "--worker-skip", ",".join(skip)])
        entry["skipped"] = skipped
        if not args.skip_memory:
            entry["memory"] = {}
            for v in args.variants:
                if v in skip:
                    continue
                print(f"N={n}: peak memory of {v}", flush=True)
                entry["memory"][v] = run_worker(
                    args, ["--worker-length", str(n), "--worker-variant", v])
        result["by_length"][str(n)] = entry
    result["load_average_end"] = os.getloadavg()
    result["seconds"] = round(time.time() - started, 1)
    longest = result["by_length"][str(max(lengths))].get("ratios", {})
    goals: dict[str, Any] = {}
    if "msia_4/no_tcn" in longest:
        goals["msia_4 < 2x no_tcn at the longest length"] = longest["msia_4/no_tcn"] < 2.0
    if "msia_4_peg/msia_4" in longest:
        goals["msia_4_peg < 1.3x msia_4 at the longest length"] = longest["msia_4_peg/msia_4"] < 1.3
    cheapest = {}
    for n, entry in result["by_length"].items():
        timed = entry.get("variants", {})
        if "tcn_1" in timed:
            others = {v: timed[v]["ms_per_step"] for v in ("gru", "self_attention") if v in timed}
            cheapest[n] = {"tcn_1_ms": timed["tcn_1"]["ms_per_step"], **{f"{k}_ms": t for k, t in others.items()},
                           "tcn_cheapest": all(timed["tcn_1"]["ms_per_step"] < t for t in others.values())}
    result["goals_met"] = goals
    result["tcn_is_the_cheapest_extractor"] = cheapest
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
