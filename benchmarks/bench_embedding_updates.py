"""Benchmark: training examples/s with dense vs row-sparse embedding updates, by table size.

Trains DIN + TAPF (L = 100, d = 64, r = 0.5, batch 2048, the config of
`bench_train.py`) on the synthetic samples through `make_dataset`, for every
combination of

    item table rows     the data's vocabulary | 1,000,000 | 5,000,000
    embedding_updates   dense (Keras Adam over every row) | row_sparse (RowSparseAdam,
                        lazy Adam on the rows the batch uses; tfnegseq/optimizers.py)

For the larger tables the data's item ids are spread over the whole table by a fixed
random map (padding stays row 0), so the rows a batch touches are scattered as in a
real catalogue rather than packed at the start. All variants are built, compiled and
warmed up, then timed in interleaved rounds (as bench_train.py). Reported per variant:
median examples/s and step time; per table size: the step-time ratio dense /
row_sparse (paired per round). Writes
`benchmarks/results/embedding_updates_<xla>_<dtype>.json`.

    python benchmarks/bench_embedding_updates.py [--rows 1000000,5000000]
        [--xla on|off|clustered] [--dtype float32|mixed_bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train as bt  # noqa: E402

REPO = bt.REPO


def spread_ids(dataset, data_rows: int, table_rows: int, seed: int = 0):
    """Maps item ids [0, data_rows) to distinct random rows of [0, table_rows), 0 -> 0."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    target = np.concatenate([[0], 1 + rng.choice(table_rows - 1, data_rows - 1, replace=False)])
    table = tf.constant(target.astype("int64"))

    def remap(features, label):
        features = dict(features)
        for name in ("item_id", "pos_item_id", "neg_item_id"):
            features[name] = tf.gather(table, features[name])
        return features, label

    return dataset.map(remap, num_parallel_calls=tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--rows", default="1000000,5000000",
                    help="item table sizes besides the data's own vocabulary")
    ap.add_argument("--xla", default="on", choices=list(bt.XLA_MODES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "mixed_bfloat16"])
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None,
                    help="default: results/embedding_updates_<xla>_<dtype>.json")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(HERE, "results",
                                        f"embedding_updates_{args.xla}_{args.dtype}.json")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    if args.xla == "clustered":
        from tfnegseq.runtime import enable_auto_clustering

        enable_auto_clustering()  # before the first tf.function / tf.data pipeline

    import keras

    from tfnegseq.provenance import git_commit

    t_start = time.perf_counter()
    data_dir = bt.ensure_samples(args.data_dir)
    vocab_sizes, base = bt.training_input(data_dir, args.batch_size)
    data_rows = vocab_sizes["item_id"]
    sizes = [data_rows] + [int(r) for r in args.rows.split(",") if r]
    iterators = {rows: iter(base if rows == data_rows else spread_ids(base, data_rows, rows))
                 for rows in sizes}
    variant = bt.Variant(args.xla, args.dtype, "tapf")
    load_before = os.getloadavg()
    models: dict[str, Any] = {}
    keys = []
    for rows in sizes:
        sample, _ = next(iterators[rows])
        for mode in ("dense", "row_sparse"):
            key = f"rows={rows}|{mode}"
            t = time.perf_counter()
            model = bt.build_variant(variant, data_dir, args.batch_size, sample,
                                     {**vocab_sizes, "item_id": rows},
                                     (f"train.embedding_updates={mode}",))
            bt.run_steps(model, iterators[rows], 1)
            models[key] = (model, rows)
            keys.append(key)
            print(f"built {key}: {time.perf_counter() - t:.1f} s to first step", flush=True)
    keras.mixed_precision.set_global_policy("float32")
    for key in keys:
        model, rows = models[key]
        bt.run_steps(model, iterators[rows], args.warmup)
    wall: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for key in keys:
            model, rows = models[key]
            w, _ = bt.run_steps(model, iterators[rows], args.steps)
            wall[key].append(w / args.steps)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    b = args.batch_size
    variants = {
        k: {
            "item_table_rows": models[k][1],
            "embedding_updates": k.split("|")[1],
            "examples_per_second_median": round(b / statistics.median(wall[k]), 1),
            "step_ms_median": round(1000 * statistics.median(wall[k]), 1),
            "step_ms_rounds": [round(1000 * s, 1) for s in wall[k]],
        }
        for k in keys
    }
    ratios = {
        str(rows): round(statistics.median(
            [d / s for d, s in zip(wall[f"rows={rows}|dense"], wall[f"rows={rows}|row_sparse"],
                                   strict=True)]), 3)
        for rows in sizes
    }
    out = {
        "benchmark": "DIN + TAPF training: dense vs row-sparse embedding updates by table size",
        "command": "python benchmarks/bench_embedding_updates.py " + " ".join(argv or sys.argv[1:]),
        "model": {"backbone": "din", "polarity": "tapf", "sequence_length": 100,
                  "embedding_dim": 64, "positive_ratio": 0.5, "xla": args.xla,
                  "dtype": args.dtype},
        "batch_size": b,
        "item_slices_per_batch": b * 101,
        "data_item_vocabulary": data_rows,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "variants": variants,
        "dense_over_row_sparse_step_time": ratios,
        "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "git_commit": git_commit(),
        "machine": bt.machine_info(),
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\n{'item table rows':>16s} {'dense ex/s':>11s} {'row_sparse ex/s':>16s} "
          f"{'dense/sparse step':>18s}")
    for rows in sizes:
        d = variants[f"rows={rows}|dense"]["examples_per_second_median"]
        s = variants[f"rows={rows}|row_sparse"]["examples_per_second_median"]
        print(f"{rows:16,d} {d:11.0f} {s:16.0f} {ratios[str(rows)]:18.2f}")
    print(f"load average before/after: {out['load_average_before_after']}; "
          f"total {out['seconds_total']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
