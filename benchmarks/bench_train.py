"""Benchmark: CTR training examples/s, DIN + TAPF vs the same model without polarity.

Trains `CtrModel` (DIN backbone, L = 100, d = 64, r = 0.5, batch 2048, Adam) on the
synthetic samples read through `tfnegseq.data.input.make_dataset`, exactly as
`python -m tfnegseq.train` does (`build_model`, the same compile), for every
combination of

    xla                 on (jit_compile: the whole step in XLA)
                        | off (plain tf.function: TensorFlow / oneDNN kernels)
                        | clustered (train.auto_clustering: XLA fuses all but the
                          matmuls, which stay on oneDNN; tfnegseq/runtime.py)
    dtype               float32 | mixed_bfloat16
    model.polarity      tapf | none | pbe     (same sequence: r = 0.5 in all three)

The `on` and `off` variants run in this process, the `clustered` ones in a child
process (TensorFlow reads its XLA flags once per process). Each variant is built,
compiled and warmed up first (compile time is excluded), then timed in interleaved
rounds within its process (round 1 of every variant, then round 2,
...), so a busy machine's background load hits all variants alike. A round is
`--steps` calls of the Keras train function (what `fit` calls once per step) on a
shared training iterator. Reported per variant: examples/s of every round and their
median, and the CPU seconds per step (process time, all threads) as a load-robust
figure; per (xla, dtype): the step-time ratio TAPF / none (the median of the
per-round ratios, TAPF and none running back to back in every round; also the ratio of
the medians and of the CPU times). Writes `benchmarks/results/train_throughput.json`
and prints a table.

Builds the samples (simulate + Beam job, `configs/synthetic.yaml`) into `build/` when
`--data-dir` has none.

    python benchmarks/bench_train.py [--rounds 3] [--steps 10] [--only xla=on,dtype=float32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import machine  # noqa: E402

REPO = os.path.dirname(HERE)
CONFIG = os.path.join(REPO, "configs", "synthetic.yaml")

GOALS = {
    "din_tapf_examples_per_second": 9000,
    "tapf_over_none_step_time_ratio_max": 1.10,
}
# A plain Keras 3 model (stock Dense / Embedding layers, no tfnegseq code) measured on
# this machine by the lead: examples/s.
REFERENCE_PLAIN_KERAS = {
    "din_tapf": {"float32_xla": 5691, "mixed_bfloat16_no_xla": 6430, "mixed_bfloat16_xla": 4781},
    "din": {"float32_xla": 9230, "mixed_bfloat16_no_xla": 10878},
    "note": "plain Keras 3 model (stock layers) measured on this machine; "
    "DIN + TAPF 5,691 ex/s float32 XLA, 6,430 mixed_bfloat16 no XLA, 4,781 bf16 XLA; "
    "plain DIN 9,230 / 10,878",
}


def machine_info() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    info = machine()
    info.update(
        tensorflow=tf.__version__,
        keras=keras.__version__,
        keras_backend=keras.backend.backend(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
    )
    return info


def ensure_samples(data_dir: str | None) -> str:
    """The samples directory; simulates the log and runs the Beam job when missing."""
    from tfnegseq.config import load_config

    cfg = load_config(CONFIG, [])
    data_dir = data_dir or os.path.join(REPO, cfg.output.dir)
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        return data_dir
    from tfnegseq.data import job
    from tfnegseq.data.simulate import simulate_to_dir

    log_dir = os.path.join(os.path.dirname(os.path.abspath(data_dir)), "synthetic_log_bench")
    cfg = load_config(CONFIG, [f"source.path={log_dir}", f"output.dir={data_dir}"])
    print(f"building samples into {data_dir} ...", flush=True)
    t = time.perf_counter()
    simulate_to_dir(cfg.simulate, cfg.source.path)
    job.run(cfg)
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return data_dir


# How the training step is compiled: "on" = jit_compile (whole step in XLA), "off" = plain
# tf.function (TensorFlow kernels, oneDNN), "clustered" = plain tf.function with
# train.auto_clustering (XLA fuses everything but the matmuls; tfnegseq/runtime.py).
XLA_MODES = ("on", "off", "clustered")


@dataclasses.dataclass
class Variant:
    xla: str  # one of XLA_MODES
    dtype: str
    polarity: str

    @property
    def name(self) -> str:
        return f"{self.polarity:4s} xla={self.xla:9s} {self.dtype}"

    @property
    def key(self) -> str:
        return f"{self.polarity}|xla={self.xla}|{self.dtype}"


def training_input(data_dir: str, batch_size: int):
    """`(vocab_sizes, dataset)`: the training input pipeline as `python -m tfnegseq.train`
    builds it (parse, pad, lookup, shuffle, prefetch), repeating, seed 0."""
    from tfnegseq.config import load_config
    from tfnegseq.data.input import FeatureProcessor, make_dataset

    cfg = load_config(CONFIG, [f"train.data_dir={data_dir}"])
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    vocab_sizes = {name: v.size for name, v in processor.vocabularies.items()}
    return vocab_sizes, make_dataset(data_dir, "train", cfg, batch_size, training=True,
                                     processor=processor, repeat=True, seed=0)


def build_variant(v: Variant, data_dir: str, batch_size: int, sample, vocab_sizes,
                  overrides: tuple[str, ...] = ()):
    import keras

    from tfnegseq.config import load_config
    from tfnegseq.train import build_model, build_optimizer

    cfg = load_config(CONFIG, [
        f"model.polarity={v.polarity}", "model.backbone=din", "model.sequence_length=100",
        "model.embedding_dim=64", "model.positive_ratio=0.5", f"train.batch_size={batch_size}",
        f"train.jit_compile={str(v.xla == 'on').lower()}",
        f"train.auto_clustering={str(v.xla == 'clustered').lower()}",
        f"train.mixed_precision={v.dtype}",
        f"train.data_dir={data_dir}", *overrides,
    ])
    # As run_config: global policy, seed, build, compile.
    keras.mixed_precision.set_global_policy(v.dtype)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, vocab_sizes)
    model(sample)
    model.compile(
        optimizer=build_optimizer(cfg),
        jit_compile=cfg.train.jit_compile,
    )
    model.make_train_function()
    return model


def run_steps(model, iterator, steps: int) -> tuple[float, float]:
    """Wall and process (CPU, all threads) seconds for `steps` train steps."""
    t, c = time.perf_counter(), time.process_time()
    logs = None
    for _ in range(steps):
        logs = model.train_function(iterator)
    float(logs["loss"])  # wait for the last step
    return time.perf_counter() - t, time.process_time() - c


def select_variants(only: str) -> list[Variant]:
    filters = dict(kv.split("=") for kv in only.split(",") if kv)
    return [
        Variant(xla, dtype, polarity)
        for xla in XLA_MODES
        for dtype in ("float32", "mixed_bfloat16")
        for polarity in ("tapf", "none", "pbe")
        if filters.get("xla", xla) == xla
        and filters.get("dtype", dtype) == dtype
        and filters.get("polarity", polarity) == polarity
    ]


def measure(args, variants: list[Variant]) -> dict[str, Any]:
    """Builds, compiles and warms up every variant, then times them in interleaved rounds.

    Returns per variant key: wall and CPU seconds per step of every round, and the
    seconds from build to the first step.
    """
    import keras

    if any(v.xla == "clustered" for v in variants):
        if any(v.xla != "clustered" for v in variants):
            raise ValueError("clustered variants run in a process of their own")
        from tfnegseq.runtime import enable_auto_clustering

        enable_auto_clustering()  # before the first tf.function / tf.data pipeline
    data_dir = args.data_dir
    # One training input pipeline, shared by all variants; it runs in tf.data threads
    # next to the training step, as in training.
    vocab_sizes, train_ds = training_input(data_dir, args.batch_size)
    iterator = iter(train_ds)
    sample, _ = next(iterator)

    models = {}
    compile_s = {}
    for v in variants:
        t = time.perf_counter()
        model = build_variant(v, data_dir, args.batch_size, sample, vocab_sizes)
        run_steps(model, iterator, 1)  # trace + compile under this variant's policy
        compile_s[v.key] = time.perf_counter() - t
        models[v.key] = model
        print(f"built {v.name}: {compile_s[v.key]:.1f} s to first step", flush=True)
    keras.mixed_precision.set_global_policy("float32")
    # Warm-up after all are built: building a model resets the global seed, after which
    # TensorFlow re-instantiates the earlier variants' functions (under auto-clustering
    # that means clustering and compiling again on their next steps).
    for v in variants:
        run_steps(models[v.key], iterator, args.warmup)

    wall: dict[str, list[float]] = {v.key: [] for v in variants}
    cpu: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            w, c = run_steps(models[v.key], iterator, args.steps)
            wall[v.key].append(w / args.steps)
            cpu[v.key].append(c / args.steps)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return {k: {"wall": wall[k], "cpu": cpu[k], "compile_s": compile_s[k]} for k in wall}


def measure_in_child(args, only: str) -> dict[str, Any]:
    """`measure` for the clustered variants in a fresh process (TensorFlow reads its XLA
    flags once per process, and the clustering level applies to every function)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--data-dir", args.data_dir,
               "--batch-size", str(args.batch_size), "--rounds", str(args.rounds),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--only", only, "--raw-out", raw]
        subprocess.run(cmd, check=True)
        with open(raw) as f:
            return json.load(f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after compile")
    ap.add_argument("--only", default="",
                    help="filter, e.g. 'xla=on,dtype=float32' or 'polarity=tapf' "
                         f"(xla: {', '.join(XLA_MODES)})")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "train_throughput.json"))
    ap.add_argument("--raw-out", default=None, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)

    t_start = time.perf_counter()
    args.data_dir = ensure_samples(args.data_dir)
    data_dir = args.data_dir
    variants = select_variants(args.only)
    if args.raw_out:  # child: measure and hand the raw timings back
        with open(args.raw_out, "w") as f:
            json.dump(measure(args, variants), f)
        return 0

    from tfnegseq.provenance import git_commit

    load_before = os.getloadavg()
    here = [v for v in variants if v.xla != "clustered"]
    clustered = [v for v in variants if v.xla == "clustered"]
    raw: dict[str, Any] = measure(args, here) if here else {}
    if clustered:
        filters = [kv for kv in args.only.split(",") if kv and not kv.startswith("xla=")]
        raw.update(measure_in_child(args, ",".join(["xla=clustered", *filters])))
    load_after = os.getloadavg()
    wall = {k: r["wall"] for k, r in raw.items()}
    cpu = {k: r["cpu"] for k, r in raw.items()}
    compile_s = {k: r["compile_s"] for k, r in raw.items()}

    b = args.batch_size
    results = {}
    for v in variants:
        eps = [b / s for s in wall[v.key]]
        results[v.key] = {
            "polarity": v.polarity,
            "xla": v.xla,
            "dtype": v.dtype,
            "examples_per_second_median": round(statistics.median(eps), 1),
            "examples_per_second_rounds": [round(x, 1) for x in eps],
            "step_ms_median": round(1000 * statistics.median(wall[v.key]), 1),
            "cpu_ms_per_step_median": round(1000 * statistics.median(cpu[v.key]), 1),
            "examples_per_cpu_second": round(b / statistics.median(cpu[v.key]), 1),
            "seconds_to_first_step": round(compile_s[v.key], 1),
        }
    ratios = {}
    for xla in XLA_MODES:
        for dtype in ("float32", "mixed_bfloat16"):
            tk = Variant(xla, dtype, "tapf").key
            nk = Variant(xla, dtype, "none").key
            if tk in wall and nk in wall:
                # Headline: median over rounds of the paired ratio (the two variants run
                # back to back in every round, so they see the same background load).
                ratios[f"xla={xla}|{dtype}"] = {
                    "tapf_over_none_step_time": round(statistics.median(
                        [a / c for a, c in zip(wall[tk], wall[nk], strict=True)]), 3),
                    "tapf_over_none_ratio_of_medians": round(
                        statistics.median(wall[tk]) / statistics.median(wall[nk]), 3),
                    "tapf_over_none_cpu_time": round(
                        statistics.median(cpu[tk]) / statistics.median(cpu[nk]), 3),
                }
    tapf = [r for r in results.values() if r["polarity"] == "tapf"]
    best = max(tapf, key=lambda r: r["examples_per_second_median"]) if tapf else None
    summary = {}
    if best:
        best_key = Variant(best["xla"], best["dtype"], "tapf").key
        ratio = ratios.get(f"xla={best['xla']}|{best['dtype']}", {})
        summary = {
            "best_din_tapf": best_key,
            "best_din_tapf_examples_per_second": best["examples_per_second_median"],
            "meets_examples_per_second_goal":
                best["examples_per_second_median"] >= GOALS["din_tapf_examples_per_second"],
            "ratio_at_best": ratio.get("tapf_over_none_step_time"),
            "meets_ratio_goal": bool(ratio) and ratio["tapf_over_none_step_time"]
            <= GOALS["tapf_over_none_step_time_ratio_max"],
        }
    out = {
        "benchmark": "CTR training throughput (DIN; TAPF vs none vs PBE)",
        "command": "python benchmarks/bench_train.py " + " ".join(argv or sys.argv[1:]),
        "model": {"backbone": "din", "sequence_length": 100, "embedding_dim": 64,
                  "positive_ratio": 0.5, "mode": "interleaved", "attention_units": [80, 40],
                  "mlp_units": [200, 80], "optimizer": "Adam"},
        "input": "make_dataset(training=True, repeat=True): TFRecord gzip, parse, pad, lookup, "
                 "shuffle, prefetch; one iterator shared by all variants",
        "data_dir": os.path.relpath(data_dir, REPO) if data_dir.startswith(REPO) else data_dir,
        "train_examples": json.load(open(os.path.join(data_dir, "manifest.json")))["samples"].get(
            "train"),
        "batch_size": b,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "variants": results,
        "ratios": ratios,
        "summary": summary,
        "goals": GOALS,
        "reference_plain_keras": REFERENCE_PLAIN_KERAS,
        "load_average_before_after": [round(x, 2) for x in (*load_before, *load_after)],
        "git_commit": git_commit(),
        "machine": machine_info(),
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)

    print()
    print(f"{'variant':34s} {'ex/s (median)':>14s} {'rounds':>26s} {'CPU ms/step':>12s}")
    for v in variants:
        r = results[v.key]
        rounds = " ".join(f"{x:7.0f}" for x in r["examples_per_second_rounds"])
        print(f"{v.name:34s} {r['examples_per_second_median']:14.0f} {rounds:>26s} "
              f"{r['cpu_ms_per_step_median']:12.0f}")
    print()
    for k, r in ratios.items():
        print(f"TAPF / none step time, {k:24s}: {r['tapf_over_none_step_time']:.2f} "
              f"(paired per round; ratio of medians {r['tapf_over_none_ratio_of_medians']:.2f}, "
              f"CPU time {r['tapf_over_none_cpu_time']:.2f})")
    if summary:
        print(f"best DIN + TAPF: {summary['best_din_tapf']} "
              f"{summary['best_din_tapf_examples_per_second']:.0f} ex/s "
              f"(goal {GOALS['din_tapf_examples_per_second']}); ratio there "
              f"{summary['ratio_at_best']} (goal <= {GOALS['tapf_over_none_step_time_ratio_max']})")
    print(f"load average before/after: {out['load_average_before_after']}; "
          f"total {out['seconds_total']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
