"""Training CLI: `python -m tfnegseq.train --config CONFIG [--set k=v ...] [--seeds 0,1,2]`.

Reads the Beam job's samples (`train.data_dir`, default `output.dir`), builds the model
of the config's kind (`model.kind`, `tfnegseq.kinds`), trains it with `jit_compile`
(XLA) by default, shows Keras progress, evaluates on `train.eval_split` with the kind's
metrics (`tfnegseq.evaluate`) and writes a run directory:

    <run_dir>/metrics.json      the kind's metrics, examples/s, config, seed, versions
    <run_dir>/tensorboard/      TensorBoard logs
    <run_dir>/checkpoints/      weights after each epoch (the `train.keep_checkpoints`
                                most recent; all by default)
    <run_dir>/backup/           state for resuming an interrupted run (BackupAndRestore;
                                present only while a run is unfinished), with
                                backup/validation/, the early-stopping state
                                (`tfnegseq.validation`, "Resuming")
    <run_dir>/model.keras       the trained model
    <run_dir>/data/             vocabularies, manifest and a few examples, so export and
                                scoring need only the run directory (`tfnegseq.runs`)

With `--seeds 0,1,2,3,4` each seed runs in `<run_dir>/seed_<s>/` and
`<run_dir>/summary.json` holds mean and standard deviation per metric.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Any

import numpy as np

from tfnegseq import kinds
from tfnegseq.config import Config, ConfigError, add_config_args, load_config, require_trainable
from tfnegseq.provenance import versions
from tfnegseq.runs import copy_run_data, read_resume_state, samples_dir, write_resume_state

log = logging.getLogger("tfnegseq.train")
CHECKPOINT = re.compile(r"epoch_(\d+)\.weights\.h5")


def throughput_callback(batch_size: int, previous: list[tuple[int, float]] | None = None,
                        on_epoch: Any = None) -> Any:
    """A Keras callback measuring training examples/s per epoch; its
    `examples_per_second()` excludes the first epoch of each training call (compile: the
    run's first, and the first after a resume) when there are more.
    `previous`: (examples, seconds) of the epochs an interrupted run already trained;
    `on_epoch(epochs)` is called after each epoch with the list so far."""
    import keras

    class Throughput(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[tuple[int, float]] = [(int(n), float(s)) for n, s in previous or []]

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()
            self._steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self._steps += 1

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((self._steps * batch_size, time.perf_counter() - self._t))
            if on_epoch is not None:
                on_epoch(epoch, self.epochs)

        def examples_per_second(self) -> float:
            # each training call's first epoch compiles (a resumed run's too)
            first = {0, len(previous or [])}
            use = [e for i, e in enumerate(self.epochs) if i not in first] or self.epochs
            n = sum(e for e, _ in use)
            t = sum(s for _, s in use)
            return n / t if t > 0 else 0.0

    return Throughput()


def build_model(cfg: Config, vocab_sizes: dict[str, int]) -> Any:
    """The model of `cfg`'s kind (`ModelKind.build_model`)."""
    return kinds.get_kind(cfg.model.kind).build_model(cfg, vocab_sizes)


def build_optimizer(cfg: Config) -> Any:
    """The optimizer of `cfg`'s kind (`ModelKind.build_optimizer`)."""
    return kinds.get_kind(cfg.model.kind).build_optimizer(cfg)


def run_config(cfg: Config, verbose: int | str = "auto",
               extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Trains and evaluates one seed; writes `<run_dir>/metrics.json`; returns metrics."""
    from tfnegseq.runtime import auto_clustering, op_determinism

    # No-ops unless asked for; then set before any tf.function or tf.data pipeline.
    with auto_clustering(cfg.train.auto_clustering), op_determinism(
            cfg.train.deterministic_ops):
        return _run_config(cfg, verbose, extra_callbacks)


def _run_config(cfg: Config, verbose: int | str = "auto",
                extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    import keras

    from tfnegseq import distribute
    from tfnegseq.data.input import FeatureProcessor, make_datasets
    from tfnegseq.evaluate import evaluate, features_of
    from tfnegseq.validation import ValidationCallback

    t0 = time.perf_counter()
    tc = cfg.train
    require_trainable(cfg)
    kind = kinds.get_kind(cfg.model.kind)
    data_dir = samples_dir(cfg)
    previous = read_resume_state(tc.run_dir, cfg)  # refuses a changed config
    earlier = previous["seconds"] if previous else 0.0
    plan = distribute.setup(cfg)  # first: devices are fixed when the backend starts
    os.makedirs(tc.run_dir, exist_ok=True)
    keras.utils.set_random_seed(tc.seed)
    keras.mixed_precision.set_global_policy(tc.mixed_precision)
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    vocab_sizes = {name: v.size for name, v in processor.vocabularies.items()}
    distribute.check_vocabularies(plan, cfg, vocab_sizes)
    train_ds, eval_ds = (kind.make_datasets(cfg, data_dir, processor)
                         or make_datasets(cfg, data_dir, processor))
    steps_per_epoch = tc.steps_per_epoch or None
    if plan.multi_process:  # each process: its own files, batch / P, the same steps
        train_ds, steps_per_epoch = distribute.process_input(plan, cfg, kind, data_dir,
                                                             processor)

    def build() -> Any:
        model = kind.build_model(cfg, vocab_sizes)
        model(features_of(next(iter(eval_ds.take(1)))))  # build weights (BackupAndRestore
        # needs a built model)
        # The model owns its loss (`compile` refuses one).
        model.compile(optimizer=kind.build_optimizer(cfg), jit_compile=plan.jit_compile(tc))
        return model

    with plan.scope():
        model = build()
    sharded = distribute.sharded_variables(model)

    def record(epoch: int, epochs: list[tuple[int, float]]) -> None:
        if plan.is_chief:  # one writer of the run's files
            write_resume_state(tc.run_dir, cfg, {
                "epochs_done": epoch + 1, "epochs": epochs,
                "seconds": earlier + time.perf_counter() - t0})

    # after BackupAndRestore's own epoch-end save (callbacks run in order)
    throughput = throughput_callback(tc.batch_size, previous["epochs"] if previous else None,
                                     record)
    validation = None
    if tc.early_stopping_metric:
        valid_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            tc, eval_split="valid", early_stopping_metric="", test_at_validation=False))
        _, valid_ds = (kind.make_datasets(valid_cfg, data_dir, processor)
                       or make_datasets(valid_cfg, data_dir, processor))
        # beside the model's backup, removed with it when training ends
        validation = ValidationCallback(
            valid_ds, kind, cfg, eval_ds if tc.test_at_validation else None,
            state_dir=os.path.join(tc.run_dir, "backup", "validation"),
            write_state=plan.is_chief)
        if previous and validation.restore():
            print(f"resuming validation after epoch {previous['epochs_done']}: "
                  f"{len(validation.history)} earlier validations, best epoch "
                  f"{validation.best_epoch}", flush=True)
    chief = plan.is_chief
    backup = distribute.backup_callback(plan, os.path.join(tc.run_dir, "backup"))
    epochs = tc.epochs
    if previous and validation is not None:
        done = previous["epochs_done"]
        if validation.missed(done):
            # killed after the backup of a validation epoch, before its validation:
            # validate the backed-up weights (that epoch's model) before going on
            backup.set_model(model)
            backup.on_train_begin()
            validation.validate(model, done)
        if validation.stopped_epoch is not None:  # stopped before it was killed
            epochs = done  # no more training: fit only ends the run
    callbacks = [
        backup,
        throughput,  # before validation: its epoch time leaves validation out
        *([validation] if validation else []),  # before the checkpoint and TensorBoard
        *([] if tc.keep_checkpoints == 0 or not chief else [recent_checkpoints(
            os.path.join(tc.run_dir, "checkpoints"), tc.keep_checkpoints)]),
        *([keras.callbacks.TensorBoard(os.path.join(tc.run_dir, "tensorboard"),
                                       update_freq=50)] if chief else []),
        *(extra_callbacks or []),
    ]
    os.makedirs(os.path.join(tc.run_dir, "checkpoints"), exist_ok=True)
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose if chief else 0,
    )
    if plan.multi_process:
        # predict cannot gather outputs across processes: the chief scores the whole
        # split with a plain copy of the trained model and writes the run; the others
        # wait for it (a process that exits first fails jax's shutdown barrier)
        state = distribute.trained_state(model)  # every process: may gather
        if not chief:
            distribute.wait_for_all("run written")
            return {"distribution": plan.describe(), "chief": False}
        model = distribute.local_copy(state, build)
    result = evaluate(model, eval_ds, kind, cfg, verbose=verbose)
    model.save(os.path.join(tc.run_dir, "model.keras"))
    copy_run_data(data_dir, tc.run_dir)
    result.update(
        seed=tc.seed,
        eval_split=tc.eval_split,
        train_examples_per_second=round(throughput.examples_per_second(), 1),
        seconds=round(earlier + time.perf_counter() - t0, 2),
        resumed_from_epoch=previous["epochs_done"] if previous else None,
        validation=validation.summary() if validation else None,
        distribution={**plan.describe(), "sharded": sharded},
        data_dir=data_dir,
        versions=versions(),
        config=cfg.to_dict(),
    )
    metrics_path = os.path.join(tc.run_dir, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(result, f, indent=2)
    if tc.export:  # reads metrics.json (config) and model.keras
        result["export"] = export(tc.run_dir)
        with open(metrics_path, "w") as f:
            json.dump(result, f, indent=2)
    log.info("%s: %s", tc.run_dir, format_metrics(result, kind.metric_keys))
    if plan.multi_process:
        distribute.wait_for_all("run written")
    # the run is written: its backup (Keras' weights, the resume and validation state,
    # kept until now so that a run killed after fit resumes there) goes
    shutil.rmtree(os.path.join(tc.run_dir, "backup"), ignore_errors=True)
    return result


def export(run_dir: str) -> str:
    """`tfnegseq.export.export_run(run_dir)`; from another Keras backend (JAX), in a
    TensorFlow-backend subprocess (the SavedModel is TensorFlow's; `model.keras` is the
    same on every backend). Returns the version directory."""
    import keras

    if keras.backend.backend() == "tensorflow":
        from tfnegseq.export import export_run

        return export_run(run_dir)
    import subprocess

    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    for name in ("XLA_FLAGS", "KERAS_DISTRIBUTION_JOB_ADDRESSES",
                 "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "tfnegseq.export", "--run-dir", run_dir],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export of {run_dir} (KERAS_BACKEND=tensorflow) failed:\n"
                           f"{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def recent_checkpoints(directory: str, keep: int | None) -> Any:
    """`keras.callbacks.ModelCheckpoint` of every epoch's weights into
    `<directory>/epoch_NNN.weights.h5`, deleting all but the `keep` most recent epoch
    files (None: keeps every one)."""
    import keras

    class _Recent(keras.callbacks.ModelCheckpoint):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            super().on_epoch_end(epoch, logs)
            if keep is None:
                return
            names = sorted((n for n in os.listdir(directory) if CHECKPOINT.fullmatch(n)),
                           key=lambda n: int(CHECKPOINT.fullmatch(n)[1]))  # type: ignore[index]
            for name in names[:max(0, len(names) - keep)]:
                os.remove(os.path.join(directory, name))

    return _Recent(os.path.join(directory, "epoch_{epoch:03d}.weights.h5"),
                   save_weights_only=True)


def format_metrics(result: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " ".join(f"{k}={result[k]:.4f}" for k in keys)


def summarize(results: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Mean, sample standard deviation and values per metric over seeds."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in results]}
    for k in keys:
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
    summary = summarize(results, kinds.get_kind(cfg.model.kind).metric_keys)
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def parse_seeds(text: str) -> list[int]:
    """`"0,1,2"` -> `[0, 1, 2]`; `ConfigError` naming `--seeds` otherwise."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers. Received: {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct integers, e.g. 0,1,2. Received: {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfnegseq.train",
                                     description="Train a tfnegseq model (any model.kind).")
    add_config_args(parser)
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds, e.g. 0,1,2,3,4 (reports mean and std)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        require_trainable(cfg, args.config)
        keys = kinds.get_kind(cfg.model.kind).metric_keys
        if args.seeds:
            seeds = parse_seeds(args.seeds)
            summary = run_seeds(cfg, seeds, args.overrides, args.config)
            for k in keys:
                print(f"{k}: {summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}")
        else:
            m = run_config(cfg)
            if m.get("chief", True):
                print(f"{format_metrics(m, keys)} ({m['train_examples_per_second']} "
                      f"examples/s) -> {cfg.train.run_dir}")
            else:
                d = m["distribution"]
                print(f"process {d['process_id']} of {d['num_processes']}: trained; the "
                      f"chief (process 0) wrote {cfg.train.run_dir}")
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
