"""Benchmark: the five CTR backbones side by side (issue 15's per-backbone cost).

For DIN, Transformer, OneTrans, HyFormer and MixFormer (`CtrModel`, L = 100, d = 64,
r = 0.5, batch 2048, Adam, the unified blocks with 2 layers as in the Table 2 sweep),
each with `model.polarity` none and tapf (TAPF at the input, the placement all five
share): training examples/s, forward FLOPs per example (XLA's cost analysis of the
jitted forward pass under JAX, in a child process: a multiply-add counts 2) and the
step-time ratio TAPF / none.

Inputs are random ids held in memory (no input pipeline), so the figure is the model's
step. Every variant is built, compiled (XLA, as `train.jit_compile` defaults) and
warmed up first; then `--rounds` rounds of `--steps` `train_on_batch` calls run
interleaved (none, TAPF, none, TAPF, ...), so background load hits both alike; the
ratio is the median of per-round ratios.
One backbone's two models are in memory at a time (all ten at batch 2048 need more
than 13 GB), so backbones run one after the other: compare their examples/s with the
load of the moment in mind, the TAPF ratios within a backbone are paired.
Writes `benchmarks/results/backbones.json` and prints a table.

    python benchmarks/bench_backbones.py [--rounds 3] [--steps 5] [--batch 2048]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import machine, write_result  # noqa: E402

BACKBONES = ("din", "transformer", "onetrans", "hyformer", "mixformer")
ITEMS, USERS, HISTORY = 20_000, 5_000, 100


def batch_inputs(rng, batch: int, length: int = HISTORY):
    import numpy as np

    feats: dict[str, Any] = {"user_id": rng.integers(1, USERS, batch),
                             "item_id": rng.integers(1, ITEMS, batch)}
    for name in ("pos", "neg"):
        feats[f"{name}_item_id"] = rng.integers(1, ITEMS, (batch, length))
    orders = np.argsort(rng.random((batch, 2 * length)), axis=1) + 1
    feats["pos_order"] = np.sort(orders[:, :length], axis=1)
    feats["neg_order"] = np.sort(orders[:, length:], axis=1)
    labels = (rng.random(batch) < 0.3).astype("float32")
    return {k: np.asarray(v, np.int64) for k, v in feats.items()}, labels


def build(backbone: str, polarity: str):
    import keras

    from tfnegseq.kinds.ctr.config import CtrModelConfig
    from tfnegseq.models.ctr import CtrModel

    layers = 2 if backbone in ("onetrans", "hyformer", "mixformer") else 1
    m = CtrModelConfig(backbone=backbone, polarity=polarity, positive_ratio=0.5,
                       sequence_length=100, embedding_dim=64, num_layers=layers,
                       tapf_position="input")
    keras.utils.set_random_seed(0)
    model = CtrModel({"item_id": ITEMS, "user_id": USERS}, dataclasses.asdict(m))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    return model


def jax_flops(batch: int = 16) -> dict[str, float]:
    """Forward FLOPs per example of every variant, from XLA's cost analysis of the
    jitted forward pass under JAX (counts every dot, einsum and elementwise op; TF's
    graph profiler skips `Einsum`). Runs in this process: call under KERAS_BACKEND=jax."""
    import jax
    import numpy as np

    x, _ = batch_inputs(np.random.default_rng(0), batch)
    out = {}
    for b in BACKBONES:
        for p in ("none", "tapf"):
            model = build(b, p)
            model(x)

            def forward(trainable, non_trainable, inputs, model=model):
                outputs, _ = model.stateless_call(trainable, non_trainable, inputs)
                return outputs["logit"]

            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            cost = jax.jit(forward).lower(tv, ntv, x).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            out[f"{b}/{p}"] = float(cost["flops"]) / batch
    return out


def forward_flops() -> dict[str, float]:
    """`jax_flops` in a child process with the JAX backend."""
    import subprocess

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import bench_backbones as b; "
            "print('FLOPS=' + json.dumps(b.jax_flops()))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, cwd=os.path.dirname(HERE))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FLOPS=")][-1]
    return json.loads(line[len("FLOPS="):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "backbones.json"))
    args = ap.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = batch_inputs(rng, args.batch)
    xt = {k: tf.constant(v) for k, v in x.items()}
    yt = tf.constant(y)
    flops = {tuple(k.split("/")): v for k, v in forward_flops().items()}
    params: dict[tuple[str, str], int] = {}
    times: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {b: [] for b in BACKBONES}
    for b in BACKBONES:  # one backbone's pair in memory at a time (batch 2048: GBs each)
        variants = {}
        for p in ("none", "tapf"):
            model = build(b, p)
            for _ in range(2):  # compile + warm up
                model.train_on_batch(xt, yt)
            variants[p] = model
            params[(b, p)] = int(sum(np.prod(w.shape) for w in model.trainable_weights))
            times[(b, p)] = []
        for _ in range(args.rounds):  # TAPF and none back to back in every round
            step = {}
            for p, model in variants.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    model.train_on_batch(xt, yt)
                step[p] = (time.perf_counter() - start) / args.steps
                times[(b, p)].append(step[p])
            ratios[b].append(step["tapf"] / step["none"])
        print(f"{b}: {args.batch / statistics.median(times[(b, 'none')]):,.0f} / "
              f"{args.batch / statistics.median(times[(b, 'tapf')]):,.0f} ex/s", flush=True)
        del variants, model
        keras.backend.clear_session()

    result: dict[str, Any] = {"machine": machine(), "tensorflow": tf.__version__,
                              "keras": keras.__version__, "batch": args.batch,
                              "sequence_length": 100, "embedding_dim": 64,
                              "rounds": args.rounds, "steps": args.steps, "backbones": {}}
    lines = ["| backbone | ex/s none | ex/s TAPF | TAPF / none step time | MFLOPs/ex none | "
             "MFLOPs/ex TAPF | params |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for b in BACKBONES:
        eps = {p: args.batch / statistics.median(times[(b, p)]) for p in ("none", "tapf")}
        ratio = statistics.median(ratios[b])
        result["backbones"][b] = {
            "examples_per_second": eps,
            "step_seconds": {p: times[(b, p)] for p in ("none", "tapf")},
            "tapf_over_none_step_time_ratio": ratio,
            "tapf_over_none_per_round": ratios[b],
            "forward_flops_per_example": {p: flops[(b, p)] for p in ("none", "tapf")},
            "trainable_parameters": {p: params[(b, p)] for p in ("none", "tapf")},
        }
        lines.append(f"| {b} | {eps['none']:,.0f} | {eps['tapf']:,.0f} | {ratio:.2f}x | "
                     f"{flops[(b, 'none')] / 1e6:.1f} | {flops[(b, 'tapf')] / 1e6:.1f} | "
                     f"{params[(b, 'tapf')]:,} |")
    write_result(result, args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
