"""Benchmark (issue 17): SINE training throughput against SASRec, and `retrieve` latency.

Training (`--parts train`): `SequentialRecommender` SINE and SASRec built as `python -m
tfnegseq.train` builds them (`SequentialKind.build_model` / `build_optimizer` on a
config whose `model:` section is the official defaults, `SequentialModelConfig()`: d =
50, L = 200, 2 blocks, 1 head, dropout 0.5, K = 3; batch 128, Adam 1e-3,
`jit_compile` the `train:` default, float32), the same batches for both:

- synthetic (default): `--distinct-batches` random training batches cycled, each user a
  left-padded sequence of uniform length in [L/4, L] of positives (uniform over the
  `--train-items` catalogue rows; 2,000 as `configs/synthetic_sine.yaml`), each input
  and target positive paired with a passive negative with probability `--skip-rate`,
  one uniform random negative per target (the windows `tfnegseq.data.sequential_input`
  makes: `inputs`, `input_negatives`, `targets`, `target_negatives`,
  `random_negatives`, `mask`);
- `--data-dir build/samples/<x>` (TensorFlow only): the Beam job's sequential samples
  read through `make_sequential_dataset(training=True, repeat=True)`, as training reads
  them (their item vocabulary sizes the table).

Each model is built, compiled (its first step, timed apart) and warmed up, then timed
in `--rounds` rounds of `--steps` calls of the Keras train function (what `fit` calls
once per step), SINE and SASRec alternating within every round (ABBA: the order flips
each round) so a busy machine's background load hits both alike. Reported per model:
sequences/s and ms per step (medians over rounds, and every round), CPU ms per step
(TensorFlow); and SINE's step time over SASRec's, the median of the per-round ratios.
Goal: <= 1.3.

`--backend jax` measures the same training under `KERAS_BACKEND=jax` (synthetic
batches placed on the device once; the train function with its state carried from step
to step, as `bench_train_jax.py`); it imports no TensorFlow and skips retrieval. On a
lent GPU machine (JAX, no TensorFlow, see `benchmarks/gpu_run.sh` for the wheels):

    python -m pip install -q --no-index --find-links .gpu keras namex optree packaging
    KERAS_BACKEND=jax python benchmarks/bench_sine.py --backend jax \\
        --out "$OUT/sine_jax_gpu.json"

Retrieval (`--parts retrieve`, TensorFlow): `retrieve` latency for a `--items` (100,000)
item catalogue, K = 100 (`model.retrieve_k`), one user per request with a full
history (L = 200 positives, about half with a passive negative), at concurrency 1 and
8: in process (`tf.saved_model.load(...).signatures["retrieve"]`) and over REST (the
local server, `python -m tfnegseq.serving.server`, in a subprocess on 127.0.0.1,
row-format bodies serialized once, one keep-alive `http.client` connection per thread;
`ServingClient.retrieve` is timed too). Concurrency 1 alternates in-process and REST
requests (the REST overhead is the median of the paired differences). Helpers come
from `bench_serving.py` (`local_server`, `session_call`, `load`, `interleaved`). Goal:
p99 < 20 ms at concurrency 1.

The model served is built without training, the least work that still goes through
the real export: a run directory written by hand, exactly what `tfnegseq.train` leaves
and `tfnegseq.export.export_run` reads (`tfnegseq.runs`):

    <run>/metrics.json                  {"config": ...}: a sequential config (as above)
    <run>/model.keras                   SINE from SequentialKind.build_model, random
                                        (initial) weights, 1 + oov + --items rows
    <run>/data/vocab/item_id.tsv        --items distinct random raw ids, counts descending
    <run>/data/vocab/user_id.tsv        a few users (the sequential samples' vocabulary)
    <run>/data/examples.tfrecord.gz     4 sequential tf.Examples (the warm-up requests)

then `export_run` writes the SavedModel (signatures, asset lookup tables, warm-up
records) as it does after training. Weights do not change the cost of a request: the
graph scores the whole catalogue (one call, `rank_chunk_size` unset) and keeps a top K.
A trained model from the real pipeline (simulate -> Beam job -> train) would need a log
with 100,000 distinct kept items, minutes of Beam work for the same graph.
`--model-dir` serves an existing export (a version directory) instead.

Writes `benchmarks/results/sine.json` (TensorFlow) or `sine_jax_<platform>.json` (JAX)
with the machine, git commit, load average, goals and `goals_met`, and prints a
summary. A smoke run (about a minute; keep its JSON out of results/):

    python benchmarks/bench_sine.py --items 2000 --steps 2 --rounds 1 --warmup 1 \\
        --requests 20 --max-length 50 --out /tmp/sine_smoke.json

Length grouping (`--parts buckets`, needs `--data-dir`): SINE training epochs through
`make_sequential_dataset` with the automatic `model.length_buckets` against none (every
batch padded to L), alternating epoch by epoch; reports the bucket widths of one epoch,
the padded-slot ratio and the epoch-time ratio.

Validation input (`--parts validation`, needs `--data-dir`): one early-stopping
validation's `tfnegseq.evaluate.evaluate` of SINE (random weights; the cost does not
depend on them) on the "valid" split, its input re-read and re-parsed from the shards
at every call (as before `cache_validation_input`) against the batches kept in memory
(`tfnegseq.validation.in_memory`, what `ValidationCallback` now reads), alternating
(ABBA); reports wall and process-CPU seconds per evaluation, their paired ratios, and
that both give the same metrics.

DIN (`--parts din`, needs `--data-dir`): the sequential DIN baseline's two costs.
Training epochs (`fit` over the length-grouped train split) scoring every target
position against `model.din_train_positions` 50 drawn per user, alternating epoch by
epoch (ABBA); and one evaluation of the "valid" split (full ranking: O(L) attention
units per catalogue item) with its batches padded to L against grouped by length
(`make_sequential_dataset(..., length_buckets=None)`), both kept in memory,
alternating; reports the ratios and that the two evaluations give the same metrics.

Dropout (`--parts dropout`, TensorFlow, synthetic batches): SASRec and SINE training
steps (`train_on_batch`, XLA, dropout 0.5 as the configs) with the models' dropout
layers as built (`CounterDropout`, hashed keep masks) against the same models built
with `keras.layers.Dropout` (the backend's uniform draws, what they used before), and
with dropout 0 (the floor), interleaved in `--rounds` rounds of `--steps` steps.

Full run:

    python benchmarks/bench_sine.py [--data-dir build/samples/movielens_100k_sine]
        [--parts train,buckets,validation,retrieve] [--rounds 5] [--steps 10]
        [--items 100000] [--requests 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _machine import machine, write_result  # noqa: E402

ARCHITECTURES = ("sine", "sasrec")
GOALS = {
    "sine_over_sasrec_step_time_max": 1.3,
    "retrieve_p99_ms_concurrency_1": 20.0,
}
MODEL_NAME = "sine"
NUM_EXAMPLES = 4  # warm-up examples in the hand-written run directory


# --------------------------------------------------------------------------- config


def bench_config(args: argparse.Namespace, architecture: str, run_dir: str = "") -> Any:
    """A `sequential` config: the official model defaults (`SequentialModelConfig()`),
    L = `--max-length`, batch `--batch-size`, the `train:` defaults otherwise
    (`jit_compile` unless `--jit-compile false`), the vocabulary of
    `configs/synthetic_sine.yaml` (min_count 1, 1 OOV bucket). No YAML is read."""
    from tfnegseq.config import config_from_dict

    train: dict[str, Any] = {"batch_size": args.batch_size, "eval_split": "test"}
    if args.jit_compile is not None:
        train["jit_compile"] = args.jit_compile == "true"
    if run_dir:
        train["run_dir"] = run_dir
    return config_from_dict({
        "name": MODEL_NAME,
        "source": {"kind": "kuairec", "path": "unused"},
        "rules": {"label": ["watch_ratio >= 0.5"], "positive": ["watch_ratio >= 0.5"],
                  "negative": ["play_duration < 3000", "watch_ratio < 0.5"]},
        "samples": {"task": "sequential", "min_core": 10, "max_sequence": args.max_length},
        "vocab": {"min_count": 1, "oov_buckets": 1},
        "model": {"kind": "sequential", "architecture": architecture,
                  "max_length": args.max_length},
        "train": train,
    })


# --------------------------------------------------------------------------- training


def synthetic_batches(rng: np.random.Generator, count: int, batch: int, length: int,
                      num_items: int, start: int, skip_rate: float) -> list[dict[str, Any]]:
    """`count` training batches shaped like `make_sequential_dataset`'s (rows, int64;
    `mask` float32), each user's sequence left-padded (module docstring)."""
    keys = ("inputs", "input_negatives", "targets", "target_negatives", "random_negatives")
    out = []
    for _ in range(count):
        x = {k: np.zeros((batch, length), np.int64) for k in keys}
        for b, n in enumerate(rng.integers(max(1, length // 4), length + 1, batch)):
            pos = rng.integers(start, num_items, n + 1)  # n inputs, each one's next target
            skip = rng.random(n + 1) < skip_rate
            neg = np.where(skip, rng.integers(start, num_items, n + 1), 0)
            x["inputs"][b, length - n:] = pos[:-1]
            x["input_negatives"][b, length - n:] = neg[:-1]
            x["targets"][b, length - n:] = pos[1:]
            x["target_negatives"][b, length - n:] = neg[1:]
            x["random_negatives"][b, length - n:] = rng.integers(start, num_items, n)
        x["mask"] = (x["targets"] != 0).astype(np.float32)
        out.append(x)
    return out


@dataclasses.dataclass
class Trainee:
    architecture: str
    model: Any = None
    state: Any = None  # JAX: the training state carried from step to step
    first_step_s: float = 0.0
    wall: list[float] = dataclasses.field(default_factory=list)  # s per step, per round
    cpu: list[float] = dataclasses.field(default_factory=list)


def training_data(args: argparse.Namespace, backend: str) -> tuple[int, int, Any, str]:
    """(table rows, catalogue start, batches, description): a tf.data iterator under
    TensorFlow, an endless iterator of device arrays under JAX."""
    if args.data_dir:
        from tfnegseq.config import VocabConfig
        from tfnegseq.data.sequential_input import make_sequential_dataset
        from tfnegseq.data.vocab import Vocabulary

        vocab = Vocabulary.load(args.data_dir, "item_id", VocabConfig(min_count=1,
                                                                      oov_buckets=1))
        ds = make_sequential_dataset(args.data_dir, "train", args.batch_size, args.max_length,
                                     training=True, seed=0, item_vocab=vocab, repeat=True)
        return (vocab.size, 1 + vocab.oov_buckets, iter(ds),
                f"make_sequential_dataset({args.data_dir!r}, 'train', repeat=True)")
    start = 2  # padding row 0, one OOV row
    num_items = start + args.train_items
    batches = synthetic_batches(np.random.default_rng(0), args.distinct_batches,
                                args.batch_size, args.max_length, num_items, start,
                                args.skip_rate)
    what = (f"{args.distinct_batches} synthetic batches cycled ({args.train_items} items, "
            f"lengths uniform in [L/4, L], skip rate {args.skip_rate})")
    if backend == "jax":
        import jax

        device = [jax.device_put({k: v.astype(np.int32) if v.dtype == np.int64 else v
                                  for k, v in b.items()}) for b in batches]
        return num_items, start, itertools.cycle(device), what
    import tensorflow as tf

    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    ds = tf.data.Dataset.from_tensor_slices(stacked).repeat().prefetch(2)
    return num_items, start, iter(ds), what


def build_trainee(t: Trainee, args: argparse.Namespace, backend: str, num_items: int,
                  batches: Iterator[Any]) -> None:
    """The model as `tfnegseq.train` builds and compiles it; then its first step."""
    import keras

    from tfnegseq import kinds

    cfg = bench_config(args, t.architecture)
    kind = kinds.get_kind("sequential")
    if backend != "jax":  # Keras' seeding imports TensorFlow when it can
        keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = kind.build_model(cfg, {"item_id": num_items})
    model.compile(optimizer=kind.build_optimizer(cfg), jit_compile=cfg.train.jit_compile)
    t.model = model
    model._symbolic_build(data_batch=next(batches))  # what fit does first
    model.make_train_function()
    if backend == "jax":
        t.state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                       optimizer_variables=True, metrics_variables=True,
                                       purge_model_variables=True)
    run_steps(t, backend, batches, 1)  # traces and compiles
    t.first_step_s = time.perf_counter() - t0


def run_steps(t: Trainee, backend: str, batches: Iterator[Any], steps: int
              ) -> tuple[float, float]:
    """Wall and process (CPU, all threads) seconds of `steps` train steps, the last one
    finished."""
    wall, cpu = time.perf_counter(), time.process_time()
    logs = None
    if backend == "jax":
        import jax

        for _ in range(steps):
            logs, t.state = t.model.train_function(t.state, batches)
        jax.block_until_ready((logs, t.state))
    else:
        for _ in range(steps):
            logs = t.model.train_function(batches)
        float(logs["loss"])
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_training(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    num_items, start, batches, what = training_data(args, backend)
    trainees = [Trainee(a) for a in ARCHITECTURES]
    for t in trainees:
        build_trainee(t, args, backend, num_items, batches)
        print(f"built {t.architecture}: first step (trace + compile) {t.first_step_s:.1f} s",
              flush=True)
    for t in trainees:
        run_steps(t, backend, batches, args.warmup)
    for r in range(args.rounds):
        for t in trainees if r % 2 == 0 else trainees[::-1]:  # ABBA
            wall, cpu = run_steps(t, backend, batches, args.steps)
            t.wall.append(wall / args.steps)
            t.cpu.append(cpu / args.steps)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    b = args.batch_size
    models = {
        t.architecture: {
            "sequences_per_second_median": round(b / statistics.median(t.wall), 1),
            "sequences_per_second_rounds": [round(b / s, 1) for s in t.wall],
            "step_ms_median": round(1000 * statistics.median(t.wall), 2),
            "cpu_ms_per_step_median": round(1000 * statistics.median(t.cpu), 1),
            "first_step_s": round(t.first_step_s, 1),
            "parameters": int(t.model.count_params()) if backend != "jax" else None,
        }
        for t in trainees
    }
    sine, sasrec = trainees
    paired = [a / c for a, c in zip(sine.wall, sasrec.wall, strict=True)]
    m = bench_config(args, "sine").model
    return {
        "models": models,
        "sine_over_sasrec_step_time": round(statistics.median(paired), 3),
        "sine_over_sasrec_step_time_rounds": [round(x, 3) for x in paired],
        "sine_over_sasrec_ratio_of_medians": round(
            statistics.median(sine.wall) / statistics.median(sasrec.wall), 3),
        "sine_over_sasrec_cpu_time": round(
            statistics.median(sine.cpu) / statistics.median(sasrec.cpu), 3),
        "input": what,
        "item_table_rows": num_items,
        "batch_size": b,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "model": {"embedding_dim": m.embedding_dim, "max_length": m.max_length,
                  "num_blocks": m.num_blocks, "num_heads": m.num_heads,
                  "dropout": m.dropout, "num_interests": m.num_interests,
                  "beta_mode": m.beta_mode, "fusion": m.fusion,
                  "jit_compile": bench_config(args, "sine").train.jit_compile,
                  "dtype": "float32", "optimizer": "Adam 1e-3"},
    }


# --------------------------------------------------------------------------- retrieval


def measure_buckets(args: argparse.Namespace) -> dict[str, Any]:
    """Length grouping (`model.length_buckets`, `tfnegseq.data.sequential_input`): SINE
    training epochs over `--data-dir` with the automatic buckets against none (every
    batch padded to L), as `fit` runs them; the two alternate epoch by epoch (ABBA)."""
    import keras

    from tfnegseq import kinds
    from tfnegseq.data.sequential_input import make_sequential_dataset
    from tfnegseq.data.vocab import Vocabulary

    cfg = bench_config(args, "sine")
    kind = kinds.get_kind("sequential")
    vocab = Vocabulary.load(args.data_dir, "item_id", cfg.vocab)
    length = cfg.model.max_length
    trainees: dict[str, Any] = {}
    widths: dict[str, list[int]] = {}
    for name, buckets in (("buckets", None), ("padded", [])):
        ds = make_sequential_dataset(args.data_dir, "train", args.batch_size, length,
                                     training=True, seed=0, item_vocab=vocab,
                                     length_buckets=buckets)
        widths[name] = [int(b["mask"].shape[1]) for b in ds]
        keras.utils.set_random_seed(0)
        model = kind.build_model(cfg, {"item_id": vocab.size})
        model.compile(optimizer=kind.build_optimizer(cfg), jit_compile=cfg.train.jit_compile)
        t = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)  # compiles every bucket's program
        trainees[name] = (model, ds, time.perf_counter() - t)
    epochs: dict[str, list[float]] = {name: [] for name in trainees}
    for r in range(args.rounds):
        for name in (list(trainees) if r % 2 == 0 else list(reversed(trainees))):
            model, ds, _ = trainees[name]
            t = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            epochs[name].append(round(time.perf_counter() - t, 3))
    ratios = [a / b for a, b in zip(epochs["buckets"], epochs["padded"], strict=True)]
    return {
        "data_dir": args.data_dir,
        "batches_per_epoch": len(widths["padded"]),
        "bucket_widths_one_epoch": widths["buckets"],
        "padded_slots_ratio": round(sum(widths["buckets"]) / sum(widths["padded"]), 3),
        "epoch_s": epochs,
        "epoch_s_median": {k: statistics.median(v) for k, v in epochs.items()},
        "first_epoch_s": {k: round(v[2], 1) for k, v in trainees.items()},
        "buckets_over_padded_epoch_time": round(statistics.median(ratios), 3),
    }


def measure_dropout(args: argparse.Namespace) -> dict[str, Any]:
    """Training steps of SASRec and SINE with `CounterDropout` (as built), with
    `keras.layers.Dropout` in its place, and without dropout (module docstring)."""
    import keras

    from tfnegseq.layers import sine as sine_layers
    from tfnegseq.models import sequential as sequential_model
    from tfnegseq.models.sequential import SequentialRecommender

    rng = np.random.default_rng(0)
    num_items, start = args.train_items + 2, 2
    batches = synthetic_batches(rng, 3, args.batch_size, args.max_length, num_items, start,
                                args.skip_rate)
    models: dict[str, Any] = {}
    for arch in ARCHITECTURES:
        for variant, rate in (("counter", 0.5), ("keras", 0.5), ("none", 0.0)):
            modules = (sequential_model, sine_layers)
            built_with = [m.CounterDropout for m in modules]
            if variant == "keras":  # the model as it was built before CounterDropout
                for m in modules:
                    m.CounterDropout = keras.layers.Dropout  # type: ignore[attr-defined]
            try:
                keras.utils.set_random_seed(0)
                model = SequentialRecommender(num_items, {
                    "architecture": arch, "max_length": args.max_length, "dropout": rate},
                    catalogue_start=start)
            finally:
                for m, cls in zip(modules, built_with, strict=True):
                    m.CounterDropout = cls  # type: ignore[attr-defined]
            model.compile(optimizer="adam", jit_compile=args.jit_compile != "false")
            for b in batches[:2]:
                model.train_on_batch(b)
            models[f"{arch}/{variant}"] = model
    step_ms: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            t = time.perf_counter()
            for i in range(args.steps):
                models[name].train_on_batch(batches[i % len(batches)])
            step_ms[name].append(round((time.perf_counter() - t) / args.steps * 1000, 1))

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(
            x / y for x, y in zip(step_ms[a], step_ms[b], strict=True)), 3)

    return {
        "batch_size": args.batch_size, "max_length": args.max_length,
        "step_ms": step_ms,
        "step_ms_median": {k: statistics.median(v) for k, v in step_ms.items()},
        "counter_over_keras_step_time": {a: ratio(f"{a}/counter", f"{a}/keras")
                                         for a in ARCHITECTURES},
        "counter_over_no_dropout_step_time": {a: ratio(f"{a}/counter", f"{a}/none")
                                              for a in ARCHITECTURES},
        "keras_over_no_dropout_step_time": {a: ratio(f"{a}/keras", f"{a}/none")
                                            for a in ARCHITECTURES},
    }


def measure_din(args: argparse.Namespace) -> dict[str, Any]:
    """DIN: training epochs, every target position vs `din_train_positions` 50; one
    evaluation of "valid", padded to L vs grouped by length (module docstring)."""
    import keras

    from tfnegseq import kinds
    from tfnegseq.data.sequential_input import make_sequential_dataset
    from tfnegseq.data.vocab import Vocabulary
    from tfnegseq.evaluate import evaluate
    from tfnegseq.validation import in_memory

    kind = kinds.get_kind("sequential")
    base = bench_config(args, "din")
    vocab = Vocabulary.load(args.data_dir, "item_id", base.vocab)
    length = base.model.max_length
    train_ds = make_sequential_dataset(args.data_dir, "train", args.batch_size, length,
                                       training=True, seed=0, item_vocab=vocab,
                                       length_buckets=None)
    models: dict[str, Any] = {}
    for name, positions in (("every_position", None), ("drawn_50", 50)):
        cfg = dataclasses.replace(base, model=dataclasses.replace(
            base.model, din_train_positions=positions))
        keras.utils.set_random_seed(0)
        model = kind.build_model(cfg, {"item_id": vocab.size})
        model.compile(optimizer=kind.build_optimizer(cfg), jit_compile=cfg.train.jit_compile)
        model.fit(train_ds, epochs=1, verbose=0)  # compiles every bucket's program
        models[name] = model
    epochs: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            t = time.perf_counter()
            models[name].fit(train_ds, epochs=1, verbose=0)
            epochs[name].append(round(time.perf_counter() - t, 3))
    m = base.model
    inputs = {name: in_memory(make_sequential_dataset(
        args.data_dir, "valid", args.batch_size, length, m.negative_rule, m.max_candidates,
        item_vocab=vocab, length_buckets=buckets))
        for name, buckets in (("padded", ()), ("grouped", None))}
    model = models["drawn_50"]
    metrics = {name: evaluate(model, ds, kind, base, verbose=0)  # compiles every width
               for name, ds in inputs.items()}
    wall: dict[str, list[float]] = {name: [] for name in inputs}
    for r in range(args.rounds):
        for name in (list(inputs) if r % 2 == 0 else list(reversed(inputs))):
            t = time.perf_counter()
            evaluate(model, inputs[name], kind, base, verbose=0)
            wall[name].append(round(time.perf_counter() - t, 3))

    def ratio(v: dict[str, list[float]], a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(v[a], v[b], strict=True)), 3)

    same = all(abs(metrics["padded"][k] - metrics["grouped"][k]) < 1e-9
               for k in ("auc", "gauc", "ndcg@2", "hr@10", "ndcg@10", "mrr"))
    return {
        "data_dir": args.data_dir,
        "epoch_s": epochs,
        "epoch_s_median": {k: statistics.median(v) for k, v in epochs.items()},
        "drawn_over_every_position_epoch_time": ratio(epochs, "drawn_50", "every_position"),
        "evaluate_s": wall,
        "evaluate_s_median": {k: statistics.median(v) for k, v in wall.items()},
        "grouped_over_padded_evaluate_time": ratio(wall, "grouped", "padded"),
        "same_metrics": same,
        "metrics": metrics["grouped"],
    }


def measure_validation(args: argparse.Namespace) -> dict[str, Any]:
    """`evaluate` on `--data-dir`'s "valid" split: the input re-read at every call
    against the same batches kept in memory (`in_memory`), alternating (ABBA)."""
    import resource

    import keras

    from tfnegseq import kinds
    from tfnegseq.data.sequential_input import make_sequential_dataset
    from tfnegseq.data.vocab import Vocabulary
    from tfnegseq.evaluate import evaluate
    from tfnegseq.validation import in_memory

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    cfg = bench_config(args, "sine")
    kind = kinds.get_kind("sequential")
    vocab = Vocabulary.load(args.data_dir, "item_id", cfg.vocab)
    m = cfg.model
    inputs = {"reread": make_sequential_dataset(
        args.data_dir, "valid", args.batch_size, m.max_length, m.negative_rule,
        m.max_candidates, item_vocab=vocab)}
    t = time.perf_counter()
    inputs["in_memory"] = in_memory(inputs["reread"])
    fill_s = time.perf_counter() - t
    keras.utils.set_random_seed(0)
    model = kind.build_model(cfg, {"item_id": vocab.size})
    model.compile(optimizer=kind.build_optimizer(cfg), jit_compile=cfg.train.jit_compile)
    metrics = {name: evaluate(model, ds, kind, cfg, verbose=0)  # compiles both shapes
               for name, ds in inputs.items()}
    wall: dict[str, list[float]] = {name: [] for name in inputs}
    cpu_s: dict[str, list[float]] = {name: [] for name in inputs}
    for r in range(args.rounds):
        for name in (list(inputs) if r % 2 == 0 else list(reversed(inputs))):
            c, t = cpu(), time.perf_counter()
            evaluate(model, inputs[name], kind, cfg, verbose=0)
            wall[name].append(round(time.perf_counter() - t, 3))
            cpu_s[name].append(round(cpu() - c, 3))

    def ratio(v: dict[str, list[float]]) -> float:
        return round(statistics.median(
            a / b for a, b in zip(v["in_memory"], v["reread"], strict=True)), 3)

    return {
        "data_dir": args.data_dir,
        "split": "valid",
        "users": metrics["reread"]["eval_users"],
        "evaluate_s": wall,
        "evaluate_cpu_s": cpu_s,
        "evaluate_s_median": {k: statistics.median(v) for k, v in wall.items()},
        "evaluate_cpu_s_median": {k: statistics.median(v) for k, v in cpu_s.items()},
        "in_memory_over_reread_time": ratio(wall),
        "in_memory_over_reread_cpu": ratio(cpu_s),
        "fill_s": round(fill_s, 3),
        "same_metrics": metrics["reread"] == metrics["in_memory"],
    }


def _int64_example(features: dict[str, list[int]]) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))
        for k, v in features.items()
    })).SerializeToString()


def write_run(args: argparse.Namespace, run_dir: str) -> Any:
    """A run directory as `tfnegseq.train` leaves it (module docstring), SINE with
    random weights over `--items` catalogue items; returns its config."""
    import tensorflow as tf

    from tfnegseq import kinds

    cfg = bench_config(args, "sine", run_dir)
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(1, 2**40, int(args.items * 1.1) + 16))
    ids = rng.permutation(ids)[: args.items]  # distinct raw ids, random order
    users = np.arange(1, NUM_EXAMPLES + 1)
    data = os.path.join(run_dir, "data")
    os.makedirs(os.path.join(data, "vocab"), exist_ok=True)
    with open(os.path.join(data, "vocab", "item_id.tsv"), "w") as f:
        f.writelines(f"{i}\t{args.items - n}\n" for n, i in enumerate(ids))
    with open(os.path.join(data, "vocab", "user_id.tsv"), "w") as f:
        f.writelines(f"{u}\t1\n" for u in users)
    # sequential samples: positive / skip alternating, the last positive validates
    events = args.max_length - 1 + args.max_length % 2  # odd: the last event a positive
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(data, "examples.tfrecord.gz"), options) as w:
        for u in users:
            seq = rng.choice(ids, events, replace=False)
            polarity = np.where(np.arange(events) % 2 == 0, 1, -1)
            w.write(_int64_example({
                "user_id": [u], "seq_item_id": seq, "seq_order": np.arange(1, events + 1),
                "seq_polarity": polarity, "seq_timestamp": np.arange(events) * 1000,
                "valid_index": [events - 1], "valid_item_id": [seq[-1]],
                "test_item_id": [rng.choice(ids)]}))
    start = 1 + cfg.vocab.oov_buckets
    model = kinds.get_kind("sequential").build_model(cfg, {"item_id": start + args.items})
    length = cfg.model.max_length
    model({"inputs": np.full((1, length), start, np.int64),
           "input_negatives": np.zeros((1, length), np.int64),
           "target": np.asarray([start], np.int64),
           "candidates": np.asarray([[start, start + 1]], np.int64)})  # builds every weight
    model.save(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump({"config": cfg.to_dict(), "data_dir": None,
                   "note": "written by benchmarks/bench_sine.py: random weights"}, f)
    return cfg


def request_history(version_dir: str, length: int, seed: int = 0
                    ) -> tuple[list[int], list[int]]:
    """A full history: `length` distinct catalogue items, about half with a skip."""
    rng = np.random.default_rng(seed)
    items = np.loadtxt(os.path.join(version_dir, "assets", "item_id.txt"), np.int64, ndmin=1)
    pos = rng.choice(items, min(length, len(items) // 2), replace=False)
    neg = np.where(rng.random(len(pos)) < 0.5, rng.choice(items, len(pos)), -1)
    return [int(x) for x in pos], [int(x) for x in neg]


def measure_retrieval(args: argparse.Namespace, work: str) -> dict[str, Any]:
    import tensorflow as tf
    from bench_serving import interleaved, load, local_server, session_call

    from tfnegseq.export import export_run, read_metadata
    from tfnegseq.serving.client import ServingClient
    from tfnegseq.serving.limits import Limits

    build_s = None
    if args.model_dir:
        version_dir = args.model_dir
    else:
        t = time.perf_counter()
        write_run(args, os.path.join(work, "run"))
        version_dir = export_run(os.path.join(work, "run"), os.path.join(work, "export"),
                                 MODEL_NAME)
        build_s = round(time.perf_counter() - t, 1)
        print(f"run written and exported in {build_s} s -> {version_dir}", flush=True)
    meta = read_metadata(version_dir)
    described = meta["signatures"]
    k, length = int(described["retrieve"]["k"]), int(described["max_length"])
    with open(os.path.join(version_dir, "assets", "item_id.txt")) as f:
        catalogue = sum(1 for _ in f)
    pos, neg = request_history(version_dir, length)
    body = json.dumps({"signature_name": "retrieve",
                       "instances": [{"pos_item_id": pos, "neg_item_id": neg}]}).encode()

    loaded = tf.saved_model.load(version_dir)
    retrieve = loaded.signatures["retrieve"]
    tensors = {"pos_item_id": tf.constant([pos], tf.int64),
               "neg_item_id": tf.constant([neg], tf.int64)}
    want = {key: v.numpy() for key, v in retrieve(**tensors).items()}
    assert want["item_id"].shape == (1, k), want["item_id"].shape

    def local() -> Any:
        return retrieve(**tensors)["item_id"].numpy()

    levels = [int(c) for c in args.concurrency.split(",")]
    base = os.path.dirname(version_dir)
    name = os.path.basename(base)
    in_process: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    paired = None
    with local_server(base, name, Limits()) as (url, port, _):
        with ServingClient(url, name, timeout=60) as client:
            ids, scores = client.retrieve(pos, neg)  # the REST answer equals in-process
            np.testing.assert_array_equal(ids, want["item_id"][0])
            np.testing.assert_allclose(scores, want["score"][0], rtol=1e-5, atol=1e-5)

            def per_thread() -> Callable[[], Any]:
                return session_call(port, name, body)

            for c in levels:
                if c == 1:
                    in_process["1"], rest["1"], paired = interleaved(
                        local, per_thread(), args.requests, args.warmup_requests)
                else:
                    in_process[str(c)] = load(local, args.requests, c, args.warmup_requests)
                    rest[str(c)] = load(per_thread(), args.requests, c, args.warmup_requests,
                                        per_thread=per_thread)
            client_p50 = load(lambda: client.retrieve(pos, neg),
                              max(20, args.requests // 4), 1, 5)["p50_ms"]
    return {
        "catalogue_items": catalogue,
        "k": k,
        "history": len(pos),
        "history_negatives": sum(1 for x in neg if x >= 0),
        "request_body_bytes": len(body),
        "in_process": in_process,
        "rest_local_server": rest,
        "rest_overhead_paired_median_ms": paired,
        "serving_client_retrieve_p50_ms": client_p50,
        "model_dir": args.model_dir or "a hand-written run (random weights) through "
                     "export_run, see the module docstring",
        "run_write_and_export_s": build_s,
        "model": meta["config"]["model"],
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    ap.add_argument("--parts", default="train,retrieve",
                    help="comma-separated: train, retrieve, dropout; buckets, validation, din "
                         "(these need --data-dir)")
    ap.add_argument("--data-dir", default=None, help="sequential samples (else synthetic)")
    ap.add_argument("--train-items", type=int, default=2000, help="synthetic catalogue")
    ap.add_argument("--skip-rate", type=float, default=0.5, help="synthetic skips")
    ap.add_argument("--distinct-batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=200, help="L (model.max_length)")
    ap.add_argument("--jit-compile", choices=("true", "false"), default=None,
                    help="default: the train section's default (true)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after compile")
    ap.add_argument("--items", type=int, default=100_000, help="retrieval catalogue")
    ap.add_argument("--model-dir", default=None, help="an exported version dir to serve")
    ap.add_argument("--work-dir", default=None, help="write the run / export here")
    ap.add_argument("--requests", type=int, default=300, help="measured per setting")
    ap.add_argument("--warmup-requests", type=int, default=20)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--out", default=None,
                    help="default: results/sine.json (jax: results/sine_jax_<platform>.json)")
    args = ap.parse_args(argv)
    parts = {p for p in args.parts.split(",") if p}
    if parts - {"train", "retrieve", "buckets", "validation", "din", "dropout"} or not parts:
        ap.error(f"--parts: train, retrieve, buckets, validation, din and/or dropout. Received: "
                 f"{args.parts!r}")
    for part in ("buckets", "validation", "din"):
        if part in parts and not args.data_dir:
            ap.error(f"--parts {part}: needs --data-dir (sequential samples)")
    if args.backend == "jax":
        if args.data_dir:
            ap.error("--data-dir needs TensorFlow (tf.data); --backend jax trains on "
                     "synthetic batches")
        parts.discard("retrieve")  # the export and its signatures are TensorFlow
    os.environ["KERAS_BACKEND"] = args.backend  # before anything imports keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    import keras

    from tfnegseq.provenance import git_commit

    if keras.backend.backend() != args.backend:
        raise SystemExit(f"keras was imported with {keras.backend.backend()!r}")
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    platform = "cpu"
    if args.backend == "jax":
        import jax

        platform = jax.devices()[0].platform
    out_path = args.out or os.path.join(
        HERE, "results", "sine.json" if args.backend == "tensorflow"
        else f"sine_jax_{platform}.json")

    training = measure_training(args, args.backend) if "train" in parts else None
    buckets = measure_buckets(args) if "buckets" in parts else None
    validation = measure_validation(args) if "validation" in parts else None
    din = measure_din(args) if "din" in parts else None
    dropout = measure_dropout(args) if "dropout" in parts else None
    retrieval = None
    if "retrieve" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-sine-") as tmp:
            retrieval = measure_retrieval(args, args.work_dir or tmp)

    ratio = training["sine_over_sasrec_step_time"] if training else None
    p99 = {where: retrieval[where]["1"]["p99_ms"]
           for where in ("in_process", "rest_local_server")
           if retrieval and "1" in retrieval[where]}
    goal_p99 = GOALS["retrieve_p99_ms_concurrency_1"]
    info = machine()
    info.update(keras=keras.__version__, keras_backend=keras.backend.backend())
    if "tensorflow" in sys.modules:
        info["tensorflow"] = sys.modules["tensorflow"].__version__
    if args.backend == "jax":
        import jax

        info.update(jax=jax.__version__, devices=[
            {"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in jax.devices()])
    result = {
        "benchmark": "SINE vs SASRec training throughput; retrieve latency (issue 17)",
        "command": "python benchmarks/bench_sine.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "backend": args.backend,
        "training": training,
        "length_buckets": buckets,
        "validation_input": validation,
        "din": din,
        "dropout": dropout,
        "retrieve": retrieval,
        "goals": GOALS,
        "goals_met": {
            "sine_over_sasrec_step_time_max":
                None if ratio is None else ratio <= GOALS["sine_over_sasrec_step_time_max"],
            "retrieve_in_process_p99_ms_concurrency_1":
                None if "in_process" not in p99 else p99["in_process"] < goal_p99,
            "retrieve_rest_p99_ms_concurrency_1":
                None if "rest_local_server" not in p99 else p99["rest_local_server"] < goal_p99,
        },
        "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "notes": "Shared machine: other jobs may run during the measurement (see the load "
                 "average); compare ratios within this run, not absolute figures across runs.",
        "tensorflow_imported": "tensorflow" in sys.modules,
        "git_commit": git_commit(),
        "machine": info,
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    write_result(result, out_path)
    print_summary(result, out_path)
    return 0


def print_summary(result: dict[str, Any], out_path: str) -> None:
    print()
    training, retrieval = result["training"], result["retrieve"]
    if training:
        for arch, r in training["models"].items():
            print(f"{arch:7s} {r['sequences_per_second_median']:10,.0f} sequences/s "
                  f"({r['step_ms_median']:.1f} ms/step, CPU {r['cpu_ms_per_step_median']:.0f} "
                  f"ms/step, first step {r['first_step_s']:.0f} s)")
        print(f"SINE / SASRec step time: {training['sine_over_sasrec_step_time']:.2f} "
              f"(paired per round; goal <= {GOALS['sine_over_sasrec_step_time_max']})")
    buckets = result.get("length_buckets")
    if buckets:
        print(f"length buckets: SINE epoch {buckets['epoch_s_median']['buckets']:.2f} s vs "
              f"{buckets['epoch_s_median']['padded']:.2f} s padded to L "
              f"(ratio {buckets['buckets_over_padded_epoch_time']:.2f}; padded slots x"
              f"{buckets['padded_slots_ratio']:.2f}; widths {buckets['bucket_widths_one_epoch']})")
    validation = result.get("validation_input")
    if validation:
        med, cpu = validation["evaluate_s_median"], validation["evaluate_cpu_s_median"]
        print(f"validation input: evaluate {med['in_memory']:.2f} s in memory vs "
              f"{med['reread']:.2f} s re-read (time x{validation['in_memory_over_reread_time']}"
              f", CPU {cpu['in_memory']:.2f} vs {cpu['reread']:.2f} s, x"
              f"{validation['in_memory_over_reread_cpu']}; same metrics: "
              f"{validation['same_metrics']})")
    din = result.get("din")
    if din:
        ep, ev = din["epoch_s_median"], din["evaluate_s_median"]
        print(f"DIN: epoch {ep['drawn_50']:.1f} s with 50 drawn target positions vs "
              f"{ep['every_position']:.1f} s every position "
              f"(x{din['drawn_over_every_position_epoch_time']}); evaluate "
              f"{ev['grouped']:.1f} s grouped vs {ev['padded']:.1f} s padded "
              f"(x{din['grouped_over_padded_evaluate_time']}; same metrics: "
              f"{din['same_metrics']})")
    dropout = result.get("dropout")
    if dropout:
        med = dropout["step_ms_median"]
        for arch in ARCHITECTURES:
            print(f"dropout {arch}: {med[arch + '/counter']:.0f} ms/step CounterDropout, "
                  f"{med[arch + '/keras']:.0f} keras.layers.Dropout, {med[arch + '/none']:.0f} "
                  f"none (counter / keras x{dropout['counter_over_keras_step_time'][arch]})")
    if retrieval:
        print(f"retrieve: {retrieval['catalogue_items']:,} items, K = {retrieval['k']}, "
              f"history {retrieval['history']}")
        for where in ("in_process", "rest_local_server"):
            for c, r in retrieval[where].items():
                print(f"  {where:17s} c={c}: p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} "
                      f"ms  {r['throughput_rps']:7.1f} req/s")
        print(f"  REST overhead (paired median): {retrieval['rest_overhead_paired_median_ms']} ms;"
              f" ServingClient.retrieve p50 {retrieval['serving_client_retrieve_p50_ms']} ms "
              f"(goal p99 < {GOALS['retrieve_p99_ms_concurrency_1']} ms at c=1)")
    print(f"goals met: {result['goals_met']}")
    print(f"load average before/after: {result['load_average_before_after']}; "
          f"total {result['seconds_total']:.0f} s -> {out_path}")


if __name__ == "__main__":
    sys.exit(main())
