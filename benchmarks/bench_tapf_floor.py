"""Benchmark: a lower bound on TAPF's training cost on this machine, next to the step it
is compared with.

Issue 5 asks for DIN + TAPF to cost at most 1.10x the training step of the same model
without polarity encoding. Whatever the implementation, a TAPF training step has to run
its three per-token `[d, d]` products forward (eq. 3: `(h * e_v) W_int`; eq. 4:
`h W_g,h` and `e W_g,e`) and, backward, the input gradient of each and the weight
gradient of each: nine `[B * L, d] x [d, d]`-sized matmuls per step (B * L = 204,800
tokens at batch 2048, L = 100; d = 64). This script times exactly those nine matmuls
(bf16, TensorFlow's oneDNN kernels, which use AMX on this CPU, the fastest matmuls
measured here; no elementwise work, no concat, nothing else of TAPF) in the same process
and interleaved rounds as the full training step of the model without polarity (DIN,
auto-clustered mixed_bfloat16, the fastest setting in bench_train.py) and of DIN + TAPF.

    floor ratio = (step without polarity + the nine matmuls) / step without polarity

is then a lower bound of the TAPF / none step-time ratio for any implementation that
computes TAPF's products as separate matmuls (which is what `keras.ops` can express;
only a kernel fusing TAPF into the attention MLP, keeping tokens in cache, could go
below it). Also timed, for context: one streaming pass over a `[B, L, d]` bf16 tensor
(read + write, XLA) and the nine matmuls at 1,024 rows (operands that fit in L2):
their time is mostly per-call overhead, which is why splitting the batch into
cache-sized chunks does not pay from TensorFlow (200 such chunks per step).

    python benchmarks/bench_tapf_floor.py [--rounds 5] [--steps 10]

Writes `benchmarks/results/tapf_floor.json`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
from _machine import write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "tapf_floor.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from tfnegseq.runtime import enable_auto_clustering

    enable_auto_clustering()  # before TensorFlow compiles anything in this process
    import keras
    import numpy as np
    import tensorflow as tf
    from bench_train import (
        Variant,
        build_variant,
        ensure_samples,
        machine_info,
        run_steps,
        training_input,
    )

    from tfnegseq.provenance import git_commit

    t_start = time.perf_counter()
    data_dir = ensure_samples(args.data_dir)
    vocab_sizes, train_ds = training_input(data_dir, args.batch_size)
    iterator = iter(train_ds)
    sample, _ = next(iterator)
    models = {}
    for polarity in ("none", "tapf"):
        models[polarity] = build_variant(Variant("clustered", "mixed_bfloat16", polarity),
                                         data_dir, args.batch_size, sample, vocab_sizes)
        run_steps(models[polarity], iterator, 1)
    keras.mixed_precision.set_global_policy("float32")

    tokens, d = args.batch_size * args.length, args.dim
    rng = np.random.default_rng(0)

    def bf16(*shape):
        return tf.constant(rng.normal(size=shape).astype("float32"), tf.bfloat16)

    # Forward inputs (x = h * e_v, h, e), their kernels, and the upstream gradients
    # (d logits for the gate's two products, d pre-activation for the interaction).
    x, h, e, g_int, g_gate = (bf16(tokens, d) for _ in range(5))
    w_int, w_h, w_e = (bf16(d, d) for _ in range(3))

    @tf.function
    def nine_matmuls(x, h, e, g_int, g_gate):
        forward = [tf.matmul(x, w_int), tf.matmul(h, w_h), tf.matmul(e, w_e)]
        input_grads = [tf.matmul(g_int, w_int, transpose_b=True),
                       tf.matmul(g_gate, w_h, transpose_b=True),
                       tf.matmul(g_gate, w_e, transpose_b=True)]
        weight_grads = [tf.matmul(x, g_int, transpose_a=True),
                        tf.matmul(h, g_gate, transpose_a=True),
                        tf.matmul(e, g_gate, transpose_a=True)]
        return forward + input_grads + weight_grads

    @tf.function
    def stream(x):  # clustered by XLA: one read and one write of [B * L, d]
        return x * tf.constant(2.0, tf.bfloat16) + tf.constant(1.0, tf.bfloat16)

    small = [bf16(1024, d) for _ in range(5)]  # 128 KiB per operand: fits in L2

    def timed(fn, *inputs, reps):
        t = time.perf_counter()
        out = None
        for _ in range(reps):
            out = fn(*inputs)
        _ = (out[0] if isinstance(out, list) else out).numpy()
        return (time.perf_counter() - t) / reps

    for _ in range(3):  # warm-up (tracing, clustering, compiling)
        timed(nine_matmuls, x, h, e, g_int, g_gate, reps=1)
        timed(nine_matmuls, *small, reps=1)
        timed(stream, x, reps=1)
        for model in models.values():
            run_steps(model, iterator, 1)

    keys = ("step_none", "step_tapf", "nine_matmuls", "nine_matmuls_l2", "stream_pass")
    rounds: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for polarity, model in models.items():
            wall, _ = run_steps(model, iterator, args.steps)
            rounds[f"step_{polarity}"].append(wall / args.steps)
        rounds["nine_matmuls"].append(timed(nine_matmuls, x, h, e, g_int, g_gate,
                                            reps=args.steps))
        rounds["nine_matmuls_l2"].append(timed(nine_matmuls, *small, reps=200))
        rounds["stream_pass"].append(timed(stream, x, reps=args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {1000 * v[-1]:.1f} ms" for k, v in rounds.items()), flush=True)

    ms = {k: round(1000 * statistics.median(v), 2) for k, v in rounds.items()}
    floor_rounds = [(n + m) / n for n, m in zip(rounds["step_none"], rounds["nine_matmuls"],
                                                strict=True)]
    ratio_rounds = [t / n for t, n in zip(rounds["step_tapf"], rounds["step_none"],
                                          strict=True)]
    flops = 9 * 2 * tokens * d * d
    tensor_bytes = tokens * d * 2
    result = {
        "benchmark": "lower bound of TAPF's training cost: its nine per-token matmuls "
                     "(forward, input and weight gradients) vs the step without polarity",
        "command": "python benchmarks/bench_tapf_floor.py " + " ".join(argv or sys.argv[1:]),
        "setting": {"backbone": "din", "batch_size": args.batch_size,
                    "sequence_length": args.length, "embedding_dim": d,
                    "steps": "xla=clustered (train.auto_clustering), mixed_bfloat16, "
                             "TFRecord input as bench_train.py",
                    "matmuls": "tf.matmul bf16 (oneDNN), [B*L, d] x [d, d] and "
                               "[d, B*L] x [B*L, d], outside XLA"},
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "ms_median": ms,
        "ms_rounds": {k: [round(1000 * x, 2) for x in v] for k, v in rounds.items()},
        "floor_ratio_median": round(statistics.median(floor_rounds), 3),
        "measured_tapf_over_none_median": round(statistics.median(ratio_rounds), 3),
        "goal_tapf_over_none_max": 1.10,
        "budget_ms_at_goal": round(0.10 * ms["step_none"], 2),
        "nine_matmuls_gflop_per_s": round(flops / (ms["nine_matmuls"] / 1000) / 1e9, 1),
        "nine_matmuls_l2_gflop_per_s": round(
            9 * 2 * 1024 * d * d / (ms["nine_matmuls_l2"] / 1000) / 1e9, 1),
        "stream_pass_gb_per_s": round(2 * tensor_bytes / (ms["stream_pass"] / 1000) / 1e9, 1),
        "examples_per_second": {
            "none": round(args.batch_size / (ms["step_none"] / 1000), 1),
            "tapf": round(args.batch_size / (ms["step_tapf"] / 1000), 1),
        },
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "git_commit": git_commit(),
        "machine": machine_info(),
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    write_result(result, args.out)
    print(f"\nstep none {ms['step_none']:.1f} ms, TAPF {ms['step_tapf']:.1f} ms "
          f"(ratio {result['measured_tapf_over_none_median']}); TAPF's nine matmuls alone "
          f"{ms['nine_matmuls']:.1f} ms -> floor ratio {result['floor_ratio_median']} "
          f"(goal <= 1.10 leaves {result['budget_ms_at_goal']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
