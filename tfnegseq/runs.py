"""Run directories: what training writes, and what export, scoring and serving read.

A run directory is self-contained: at training time the vocabularies, the samples'
manifest and a few examples (for the export's warm-up requests) are copied into
`<run_dir>/data/`, so exporting or scoring a run needs only the run directory, not the
samples directory it was trained from (which may be gone, or rebuilt since).

    <run_dir>/metrics.json             metrics, config, seed, versions
    <run_dir>/model.keras              the trained model
    <run_dir>/data/vocab/<name>.tsv    the vocabularies the model's rows come from
    <run_dir>/data/manifest.json       the samples' manifest (counts, schema hash)
    <run_dir>/data/examples.tfrecord.gz   up to 16 samples (warm-up requests)
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfnegseq.config import Config, ConfigError, config_from_dict

RUN_DATA = "data"
EXAMPLES_FILE = "examples.tfrecord.gz"
NUM_EXAMPLES = 16


def samples_dir(cfg: Config) -> str:
    """The Beam job's output the config trains on (`train.data_dir`, else `output.dir`);
    `ConfigError` when it holds no samples."""
    d = cfg.train.data_dir or cfg.output.dir
    if "://" not in d and not os.path.exists(os.path.join(d, "manifest.json")):
        raise ConfigError(
            f"train.data_dir: no samples at {d!r} (manifest.json missing); "
            "run python -m beam_jobs.build_samples --config ... first"
        )
    return d


def run_data_dir(run_dir: str) -> str:
    return os.path.join(run_dir, RUN_DATA)


def copy_run_data(data_dir: str, run_dir: str) -> str:
    """Copies the vocabularies, the manifest and a few examples of `data_dir` into
    `<run_dir>/data/`; returns that directory."""
    import tensorflow as tf

    from tfnegseq.data.input import split_files

    out = run_data_dir(run_dir)
    tf.io.gfile.makedirs(os.path.join(out, "vocab"))
    vocab = os.path.join(data_dir, "vocab")
    for name in tf.io.gfile.listdir(vocab):
        if not tf.io.gfile.isdir(os.path.join(vocab, name)):
            tf.io.gfile.copy(os.path.join(vocab, name), os.path.join(out, "vocab", name),
                             overwrite=True)
    tf.io.gfile.copy(os.path.join(data_dir, "manifest.json"),
                     os.path.join(out, "manifest.json"), overwrite=True)
    examples: list[bytes] = []
    for split in ("test", "valid", "train"):
        try:
            files = split_files(data_dir, split)
        except FileNotFoundError:
            continue
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(NUM_EXAMPLES)
        examples = [bytes(x.numpy()) for x in ds]
        if examples:
            break
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(out, EXAMPLES_FILE), options) as writer:
        for record in examples:
            writer.write(record)
    return out


def read_run_examples(run_dir: str) -> list[bytes]:
    """The examples `copy_run_data` kept; `FileNotFoundError` when there are none."""
    import tensorflow as tf

    path = os.path.join(run_data_dir(run_dir), EXAMPLES_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found; re-train the run with this version")
    found = [bytes(x.numpy()) for x in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    if not found:
        raise FileNotFoundError(f"{path} holds no examples (the samples had none)")
    return found


def load_run(run_dir: str) -> tuple[Config, dict[str, Any]]:
    """(config, metrics) of a finished training run, from `<run_dir>/metrics.json`."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; is {run_dir!r} a finished training run?")
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    if "config" not in metrics:
        raise ConfigError(f"{path}: no 'config' entry (written by an older trainer?)")
    return config_from_dict(metrics["config"], where=path), metrics
