"""Training CLI: `python -m tfnegseq.train --config CONFIG [--set k=v ...] [--seeds 0,1,2]`.

Reads the Beam job's samples (`train.data_dir`, default `output.dir`), trains the CTR
model with `jit_compile` (XLA) by default, shows Keras progress, evaluates on
`train.eval_split` and writes a run directory:

    <run_dir>/metrics.json      auc, gauc, logloss, examples/s, config, seed, versions
    <run_dir>/tensorboard/      TensorBoard logs
    <run_dir>/checkpoints/      weights after each epoch
    <run_dir>/backup/           state for resuming an interrupted run (BackupAndRestore)
    <run_dir>/model.keras       the trained model

With `--seeds 0,1,2,3,4` each seed runs in `<run_dir>/seed_<s>/` and
`<run_dir>/summary.json` holds mean and standard deviation per metric.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from tfnegseq.config import Config, ConfigError, add_config_args, load_config

log = logging.getLogger("tfnegseq.train")

METRIC_KEYS = ("auc", "gauc", "logloss")


def throughput_callback(batch_size: int) -> Any:
    """A Keras callback measuring training examples/s per epoch; its
    `examples_per_second()` excludes the first epoch (compile) when there are more."""
    import keras

    class Throughput(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[tuple[int, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()
            self._steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self._steps += 1

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((self._steps * batch_size, time.perf_counter() - self._t))

        def examples_per_second(self) -> float:
            use = self.epochs[1:] or self.epochs
            n = sum(e for e, _ in use)
            t = sum(s for _, s in use)
            return n / t if t > 0 else 0.0

    return Throughput()


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    import tfnegseq

    return {
        "tfnegseq": tfnegseq.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The checkout's commit (with "+dirty" for local changes), None outside a checkout."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_dir_of(cfg: Config) -> str:
    d = cfg.train.data_dir or cfg.output.dir
    if "://" not in d and not os.path.exists(os.path.join(d, "manifest.json")):
        raise ConfigError(
            f"train.data_dir: no samples at {d!r} (manifest.json missing); "
            "run python -m beam_jobs.build_samples --config ... first"
        )
    return d


def side_feature_names(cfg: Config) -> list[str]:
    return [f"user_{f}" for f in cfg.samples.user_features] + [
        f"item_{f}" for f in cfg.samples.item_features
    ]


def build_model(cfg: Config, vocab_sizes: dict[str, int]):
    import dataclasses

    from tfnegseq.models.ctr import CtrModel

    return CtrModel(
        vocab_sizes=vocab_sizes,
        model=dataclasses.asdict(cfg.model),
        side_features=side_feature_names(cfg),
        row_sparse_gradients=cfg.train.embedding_updates == "row_sparse",
        name="ctr_model",
    )


def build_optimizer(cfg: Config):
    """Adam, or its lazy row-sparse form for `train.embedding_updates: row_sparse`."""
    import keras

    from tfnegseq.optimizers import RowSparseAdam

    if cfg.train.embedding_updates == "row_sparse":
        return RowSparseAdam(cfg.train.learning_rate)
    return keras.optimizers.Adam(cfg.train.learning_rate)


def evaluate(model, dataset) -> dict[str, Any]:
    """AUC, GAUC and logloss of `model` on `dataset` (numpy metrics, exact)."""
    from tfnegseq import metrics

    labels, probs, users = [], [], []
    for features, label in dataset:
        out = model(features, training=False)
        probs.append(np.asarray(out["probability"], dtype=np.float64))
        labels.append(np.asarray(label))
        users.append(np.asarray(features["user_id"]))
    y = np.concatenate(labels)
    p = np.concatenate(probs)
    u = np.concatenate(users)
    result: dict[str, Any] = {
        "auc": float(metrics.auc(y, p)),
        "gauc": float(metrics.gauc(u, y, p)),
        "logloss": float(metrics.logloss(y, p)),
        "eval_examples": int(len(y)),
        "eval_positive_rate": float(y.mean()) if len(y) else 0.0,
    }
    return result


def run_config(cfg: Config, verbose: int | str = "auto",
               extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Trains and evaluates one seed; writes `<run_dir>/metrics.json`; returns metrics."""
    from tfnegseq.runtime import auto_clustering

    # A no-op unless asked for; then set before any tf.function or tf.data pipeline.
    with auto_clustering(cfg.train.auto_clustering):
        return _run_config(cfg, verbose, extra_callbacks)


def _run_config(cfg: Config, verbose: int | str = "auto",
                extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    import keras

    from tfnegseq.data.input import FeatureProcessor, make_dataset

    t0 = time.perf_counter()
    tc = cfg.train
    data_dir = data_dir_of(cfg)
    os.makedirs(tc.run_dir, exist_ok=True)
    keras.utils.set_random_seed(tc.seed)
    keras.mixed_precision.set_global_policy(tc.mixed_precision)
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    vocab_sizes = {name: v.size for name, v in processor.vocabularies.items()}
    train_ds = make_dataset(data_dir, "train", cfg, tc.batch_size, training=True,
                            processor=processor, seed=tc.seed)
    eval_ds = make_dataset(data_dir, tc.eval_split, cfg, tc.batch_size, processor=processor)
    model = build_model(cfg, vocab_sizes)
    sample_features, _ = next(iter(eval_ds.take(1)))
    model(sample_features)  # build weights (BackupAndRestore needs a built model)
    model.compile(
        optimizer=build_optimizer(cfg),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        jit_compile=tc.jit_compile,
    )
    throughput = throughput_callback(tc.batch_size)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(tc.run_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(tc.run_dir, "checkpoints", "epoch_{epoch:03d}.weights.h5"),
            save_weights_only=True,
        ),
        keras.callbacks.TensorBoard(os.path.join(tc.run_dir, "tensorboard"), update_freq=50),
        throughput,
        *(extra_callbacks or []),
    ]
    os.makedirs(os.path.join(tc.run_dir, "checkpoints"), exist_ok=True)
    model.fit(
        train_ds,
        epochs=tc.epochs,
        steps_per_epoch=tc.steps_per_epoch or None,
        callbacks=callbacks,
        verbose=verbose,
    )
    result = evaluate(model, eval_ds)
    model.save(os.path.join(tc.run_dir, "model.keras"))
    result.update(
        seed=tc.seed,
        eval_split=tc.eval_split,
        train_examples_per_second=round(throughput.examples_per_second(), 1),
        seconds=round(time.perf_counter() - t0, 2),
        data_dir=data_dir,
        versions=versions(),
        config=cfg.to_dict(),
    )
    metrics_path = os.path.join(tc.run_dir, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(result, f, indent=2)
    if tc.export:  # reads metrics.json (config) and model.keras
        from tfnegseq.export import export_run

        result["export"] = export_run(tc.run_dir)
        with open(metrics_path, "w") as f:
            json.dump(result, f, indent=2)
    log.info("%s: auc=%.4f gauc=%.4f logloss=%.4f", tc.run_dir, result["auc"],
             result["gauc"], result["logloss"])
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in results]}
    for k in METRIC_KEYS:
        v = np.array([r[k] for r in results], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                  "values": v.tolist()}
    return out


def run_seeds(cfg: Config, seeds: list[int], overrides: list[str], config_path: str,
              verbose: int | str = "auto") -> dict[str, Any]:
    base = cfg.train.run_dir
    results = []
    for s in seeds:
        c = load_config(config_path, overrides + [f"train.seed={s}",
                                                  f"train.run_dir={base}/seed_{s}"])
        results.append(run_config(c, verbose))
    summary = summarize(results)
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfnegseq.train",
                                     description="Train a tfnegseq CTR model.")
    add_config_args(parser)
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds, e.g. 0,1,2,3,4 (reports mean and std)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.seeds:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            summary = run_seeds(cfg, seeds, args.overrides, args.config)
            for k in METRIC_KEYS:
                print(f"{k}: {summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}")
        else:
            m = run_config(cfg)
            print(f"auc={m['auc']:.4f} gauc={m['gauc']:.4f} logloss={m['logloss']:.4f} "
                  f"({m['train_examples_per_second']} examples/s) -> {cfg.train.run_dir}")
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
