"""Benchmark: tf.data input examples/s over the Beam job's shards (max_history 100).

Builds samples from a simulated log (or uses `--data-dir`), then iterates the training
input pipeline (`tfnegseq.data.input.make_dataset`: parse, left-pad, id lookup, shuffle,
prefetch) at batch 2048 and reports examples/s, next to a bare read of the same gzip
records (no parsing) in the same run. Writes `benchmarks/results/input.json`.

    python benchmarks/bench_input.py [--data-dir DIR] [--events 300000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import machine, write_result  # noqa: E402

REPO = os.path.dirname(HERE)


def timed_pass(ds, batches: int, batch_size: int) -> float:
    it = iter(ds)
    next(it)  # warm-up: builds tables and fills prefetch
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        n += batch_size
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "input.json"))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfnegseq.config import load_config
    from tfnegseq.data import job
    from tfnegseq.data.input import make_dataset, split_files
    from tfnegseq.data.simulate import simulate_to_dir

    cfg_path = os.path.join(REPO, "configs", "synthetic.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        sets = ["train.shuffle_buffer=20000"]
        if data_dir is None:
            data_dir = f"{tmp}/out"
            sets += [f"source.path={tmp}/log", f"output.dir={data_dir}",
                     f"simulate.num_users={max(1, args.events // 500)}",
                     "simulate.events_per_user_min=50", "simulate.events_per_user_max=2000",
                     "split.kind=user", "split.valid_fraction=0.0", "split.test_fraction=0.0"]
            cfg = load_config(cfg_path, sets)
            simulate_to_dir(cfg.simulate, cfg.source.path)
            job.run(cfg)
        cfg = load_config(cfg_path, sets)
        files = split_files(data_dir, "train")
        raw = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(args.batch_size)
        raw = raw.repeat().prefetch(tf.data.AUTOTUNE)
        raw_rate = timed_pass(raw, args.batches, args.batch_size)
        ds = make_dataset(data_dir, "train", cfg, args.batch_size, training=True, repeat=True,
                          seed=0)
        rate = timed_pass(ds, args.batches, args.batch_size)
    result = {
        "benchmark": "tf.data input",
        "max_history": cfg.samples.max_history,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "examples_per_second": round(rate, 1),
        "raw_gzip_read_examples_per_second": round(raw_rate, 1),
        "input_over_raw_time_ratio": round(raw_rate / rate, 2),
        "goal_examples_per_second": 50000,
        "machine": machine(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
