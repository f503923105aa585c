"""The one-process reference of a two-process data-parallel run (tests/test_distribute.py).

    KERAS_BACKEND=jax python tests/distribute_reference.py CONFIG OUT_DIR --set k=v ...

Under `train.distribution: data_parallel` with two processes, process p reads the
training files `files[p::2]` in batches of `batch_size / 2`, and step k trains on process
0's batch k followed by process 1's batch k. This script trains the same model (the
kind's, built and compiled as `tfnegseq.train` builds it, same seed) in one process, on
one device, on exactly those global batches (each process's input built by the same
`input_shard`, concatenated batch by batch), for the same epochs and steps, and saves
`OUT_DIR/model.keras`. No distribution is involved.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from tfnegseq import kinds
    from tfnegseq.config import load_config
    from tfnegseq.data.input import FeatureProcessor, input_shard, make_datasets
    from tfnegseq.evaluate import features_of

    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    kind = kinds.get_kind(cfg.model.kind)
    data_dir = cfg.output.dir
    keras.utils.set_random_seed(tc.seed)
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    vocab_sizes = {name: v.size for name, v in processor.vocabularies.items()}
    _, eval_ds = make_datasets(cfg, data_dir, processor)
    local = dataclasses.replace(cfg, train=dataclasses.replace(tc, batch_size=tc.batch_size // 2))
    parts = []
    for p in range(2):
        with input_shard(p, 2):
            parts.append(make_datasets(local, data_dir, processor)[0])
    merged = tf.data.Dataset.zip(tuple(parts)).map(
        lambda a, b: tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), a, b))
    model = kind.build_model(cfg, vocab_sizes)
    model(features_of(next(iter(eval_ds.take(1)))))
    model.compile(optimizer=kind.build_optimizer(cfg), jit_compile=tc.jit_compile)
    model.fit(merged, epochs=tc.epochs, steps_per_epoch=tc.steps_per_epoch, verbose=0)
    os.makedirs(args.out, exist_ok=True)
    model.save(os.path.join(args.out, "model.keras"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
