"""Benchmark (JAX backend, meant for a GPU): CTR training examples/s with dense Adam vs
row-sparse (lazy Adam) embedding updates, float32 vs mixed_bfloat16.

Trains `CtrModel` (DIN backbone, L = 100, d = 64, r = 0.5, batch 2048, an item table of
`--item-rows` rows) built from a `CtrModelConfig`, for every combination of

    model.polarity      tapf | none
    dtype               float32 | mixed_bfloat16 (tables float32 either way)
    embedding updates   dense (Keras' Adam: every row of every table, every step)
                        | row_sparse (`row_sparse_gradients=True` + RowSparseAdam: under
                          JAX the step of tfnegseq/jax_sparse.py, lazy Adam on the rows
                          a batch looks up)

Made for a machine with JAX but no TensorFlow (docs GPU.md): it imports keras, jax,
numpy and `tfnegseq.config`, `tfnegseq.models.ctr`, `tfnegseq.optimizers` (and, through
the model's train step, `tfnegseq.jax_sparse`), none of which imports TensorFlow (or
YAML) at module level; the result records whether TensorFlow got imported. The input
is random numpy batches shaped like the tf.data input (`--examples` examples, placed
on the device once and cycled): `pos_item_id`/`neg_item_id` [B, 100] left-padded
histories (lengths uniform in [1, 100]) with strictly increasing `pos_order`/`neg_order`
that interleave (a random split of 1..n_pos + n_neg), item ids uniform over the table
(the worst case for row-sparse updates: about B * 101 = 206,848 distinct rows a step),
`user_id` over `--user-rows`, labels 0/1.

Every variant is built and compiled (the first step, timed apart), warmed up, then timed
in interleaved rounds within this process (round 1 of every variant, then round 2, ...).
A round is `--steps` calls of the Keras train function (what `fit` calls once per step)
with the training state carried from call to call, ended by waiting for that state.
Reported per variant: examples/s of every round and their median; per (polarity,
dtype): the step-time ratio dense / row_sparse (median of the per-round ratios). Writes
`benchmarks/results/train_jax_<platform>.json` (platform: gpu, cpu, ...) with the
devices and the versions.

GPU run (from the repository root; keras, namex and optree installed from wheels as
GPU.md says):

    KERAS_BACKEND=jax python benchmarks/bench_train_jax.py

(defaults: --item-rows 1000000 --batch-size 2048 --rounds 3 --steps 20 --warmup 3;
`--only polarity=tapf,dtype=float32` narrows the variants). A CPU smoke run:

    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python benchmarks/bench_train_jax.py \\
        --item-rows 100000 --batch-size 256 --steps 3 --rounds 1 --warmup 1
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HISTORY = 100  # samples.max_history


@dataclasses.dataclass
class Variant:
    polarity: str
    dtype: str
    updates: str
    model: Any = None
    state: Any = None
    compile_s: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.polarity}|{self.dtype}|{self.updates}"


def random_batch(rng, batch: int, item_rows: int, user_rows: int):
    """Features `CtrModel` reads, shaped and padded like the tf.data input, and labels."""
    import numpy as np

    x = {name: np.zeros((batch, HISTORY), np.int32)
         for name in ("pos_item_id", "pos_order", "neg_item_id", "neg_order")}
    counts = rng.integers(1, HISTORY + 1, size=(batch, 2))
    for i, (n_pos, n_neg) in enumerate(counts):
        orders = rng.permutation(n_pos + n_neg) + 1  # a random interleaving of 1..n
        for side, n, part in (("pos", n_pos, orders[:n_pos]), ("neg", n_neg, orders[n_pos:])):
            x[f"{side}_item_id"][i, HISTORY - n:] = rng.integers(1, item_rows, n)
            x[f"{side}_order"][i, HISTORY - n:] = np.sort(part)  # oldest first, left-padded
    x["item_id"] = rng.integers(1, item_rows, batch).astype(np.int32)
    x["user_id"] = rng.integers(1, user_rows, batch).astype(np.int32)
    return x, rng.integers(0, 2, batch).astype(np.float32)


def build(v: Variant, args, batch) -> None:
    """Model, compile, train function and its state (model variables purged, as `fit`)."""
    import keras

    from tfnegseq.kinds.ctr.config import CtrModelConfig
    from tfnegseq.models import CtrModel
    from tfnegseq.optimizers import RowSparseAdam

    sparse = v.updates == "row_sparse"
    keras.mixed_precision.set_global_policy(v.dtype)
    try:
        config = CtrModelConfig(backbone="din", polarity=v.polarity, sequence_length=HISTORY,
                             embedding_dim=64, positive_ratio=0.5)
        model = CtrModel({"item_id": args.item_rows, "user_id": args.user_rows},
                         dataclasses.asdict(config), row_sparse_gradients=sparse,
                         name="ctr_model")
        model.compile(
            optimizer=RowSparseAdam(1e-3) if sparse else keras.optimizers.Adam(1e-3),
            jit_compile=True)
        model._symbolic_build(data_batch=batch)  # what fit / train_on_batch do first
        model.make_train_function()
        v.model = model
        v.state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                       optimizer_variables=True, metrics_variables=True,
                                       purge_model_variables=True)
        v.compile_s = run_steps(v, itertools.repeat(batch), 1)  # traces and compiles
    finally:
        keras.mixed_precision.set_global_policy("float32")


def run_steps(v: Variant, batches, steps: int) -> float:
    """Wall seconds for `steps` train steps, the last one finished."""
    import jax

    start = time.perf_counter()
    logs = None
    for _ in range(steps):
        logs, v.state = v.model.train_function(v.state, batches)
    jax.block_until_ready((logs, v.state))
    return time.perf_counter() - start


def machine_info() -> dict[str, Any]:
    import jax
    import jaxlib
    import keras
    import numpy as np

    sys.path.insert(0, HERE)
    from _machine import machine

    devices = jax.devices()
    info: dict[str, Any] = machine()
    info.update(
        platform=platform.platform(),
        jax=jax.__version__, jaxlib=jaxlib.__version__, keras=keras.__version__,
        numpy=np.__version__, keras_backend=keras.backend.backend(),
        devices=[{"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in devices],
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    try:
        stats = devices[0].memory_stats() or {}
        info["device_memory_gib"] = round(stats.get("bytes_limit", 0) / 2**30, 1)
        info["device_peak_gib"] = round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)
    except Exception:  # not every platform reports memory
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--item-rows", type=int, default=1_000_000)
    ap.add_argument("--user-rows", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--examples", type=int, default=0,
                    help="distinct random examples, cycled (default: 4 batches)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="e.g. polarity=tapf,dtype=float32,updates=dense")
    ap.add_argument("--out", default=None, help="default: results/train_jax_<platform>.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, REPO)
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"run with KERAS_BACKEND=jax (got {keras.backend.backend()})")
    import jax
    import numpy as np

    from tfnegseq.provenance import git_commit

    t_start = time.perf_counter()
    platform_name = jax.devices()[0].platform
    out_path = args.out or os.path.join(HERE, "results", f"train_jax_{platform_name}.json")
    b = args.batch_size
    rng = np.random.default_rng(0)
    num_batches = max(1, (args.examples or 4 * b) // b)
    host = [random_batch(rng, b, args.item_rows, args.user_rows) for _ in range(num_batches)]
    device_batches = [jax.device_put(batch) for batch in host]
    filters = dict(kv.split("=") for kv in args.only.split(",") if kv)
    variants = [Variant(p, d, u) for p in ("tapf", "none") for d in ("float32", "mixed_bfloat16")
                for u in ("dense", "row_sparse")
                if all(filters.get(k, val) == val
                       for k, val in (("polarity", p), ("dtype", d), ("updates", u)))]
    for v in variants:
        build(v, args, device_batches[0])
        print(f"built {v.key}: first step (trace + compile) {v.compile_s:.1f} s", flush=True)
    batches = itertools.cycle(device_batches)
    for v in variants:
        run_steps(v, batches, args.warmup)
    wall: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            wall[v.key].append(run_steps(v, batches, args.steps) / args.steps)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    results = {
        v.key: {
            "polarity": v.polarity, "dtype": v.dtype, "embedding_updates": v.updates,
            "examples_per_second_median": round(b / statistics.median(wall[v.key]), 1),
            "examples_per_second_rounds": [round(b / s, 1) for s in wall[v.key]],
            "step_ms_median": round(1000 * statistics.median(wall[v.key]), 3),
            "first_step_s": round(v.compile_s, 1),
        }
        for v in variants
    }
    ratios = {}
    for v in variants:
        dense, sparse = (f"{v.polarity}|{v.dtype}|{u}" for u in ("dense", "row_sparse"))
        if v.updates == "dense" and sparse in wall:
            ratios[f"{v.polarity}|{v.dtype}"] = round(statistics.median(
                [d / s for d, s in zip(wall[dense], wall[sparse], strict=True)]), 3)
    out = {
        "benchmark": "CtrModel (DIN) training under JAX: dense vs row-sparse embedding updates",
        "command": "KERAS_BACKEND=jax python benchmarks/bench_train_jax.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "model": {"backbone": "din", "sequence_length": HISTORY, "embedding_dim": 64,
                  "positive_ratio": 0.5, "max_history": HISTORY},
        "item_table_rows": args.item_rows,
        "user_table_rows": args.user_rows,
        "batch_size": b,
        "item_slices_per_batch": b * (HISTORY + 1),
        "distinct_batches": num_batches,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "variants": results,
        "dense_over_row_sparse_step_time": ratios,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "git_commit": git_commit(),
        "machine": machine_info(),
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\n{'variant':>34s} {'ex/s':>12s} {'step ms':>9s}")
    for key, r in results.items():
        print(f"{key:>34s} {r['examples_per_second_median']:12,.0f} {r['step_ms_median']:9.2f}")
    for key, ratio in ratios.items():
        print(f"dense / row_sparse step time, {key}: {ratio:.2f}")
    print(f"tensorflow imported: {out['tensorflow_imported']}; "
          f"total {out['seconds_total']:.0f} s -> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
