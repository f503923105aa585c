"""Benchmark (issue 14): the TCN's formulations, one layer's forward + backward pass.

CAIN's `TemporalConvolution` (`tfnegseq.layers.TemporalConvolution`) runs the layer's
own kernel as one VALID `ops.conv`, and per-example kernels (PEG) as one batched
matmul to every tap's output read back by a skew (`per_example_output_taps`), except
in float32 at stride 1, where they stay one matmul of the windows side by side (before:
the windows in float32 at every stride, a per-tap sum in half precision). This times,
under XLA (`jit_compile`), float32, the gradient of `sum(y ** 2)` with respect to the input and the kernel(s) of:

| variant | what |
| --- | --- |
| `shared_conv` | the layer with its own kernel (`ops.conv`) |
| `per_example_window` | per-example kernels `[B, 2cl+1, d, f]` (PEG's) as one batched matmul of the windows side by side, `[B, n_out, (2cl+1) d] @ [B, (2cl+1) d, f]`: the layer's path in float32 at stride 1 (at every stride before) |
| `per_example_tap_sum` | the same as the sum over the 2cl+1 taps of one batched matmul of a strided slice each: the layer's bfloat16 / float16 path before |
| `per_example_output_taps` | the same as a stride-1 convolution over blocks of s inputs side by side (`[B, M, s d]`, kernel taps regrouped to `[B, Q, s d, f]`, Q = ceil((2cl+1) / s)): one batched matmul to every tap's output, `z[b, q] = blocks[b] @ W'_b[q]`, then output j = sum over q of `z[b, q, j + q]`, read by the skew trick (reshapes and one pad, no per-tap slice): the layer's path in half precision and in float32 at stride > 1 |
| `per_example_output_taps_stacked` | (stride 1 only) the same with the taps' kernels side by side, `[B, N', d] @ [B, d, (2cl+1) f]`, then a transpose to `[B, 2cl+1, N', f]` before the skew |
| `per_example_grouped` | (`--mode bf16`, stride 1 only) the same as one grouped convolution: the batch folded into the channels, `[1, N, B d]` with a `[2cl+1, d, B f]` kernel and `feature_group_count = B`, through TensorFlow's own `tf.nn.conv2d` |

The per-example variants are written here and checked against the layer's own output.
`per_example_grouped` is not the layer's path and cannot be from `keras.ops`: on the
TensorFlow backend `keras.ops.conv` runs every grouped convolution in a nested
`jit_compile=True` function, and XLA:CPU's grouped convolution is slow (float32
forward 3x TensorFlow's own at B = 32, N = 500; the float32 jit forward + backward at
the default shapes did not finish in 12 CPU-minutes), so `--mode xla` leaves it out.

`--mode bf16` runs the same under `mixed_bfloat16` (inputs and kernels cast to
bfloat16, float32 variables) with TensorFlow's XLA auto-clustering instead of
`jit_compile`, as `bench_cain.py --mode bf16` trains: the matmuls and convolutions go to
oneDNN, which uses AMX where the CPU has it.

`--rounds` interleaved rounds (order reversed every other round), medians, the ratios
of the medians of per-round ratios; peak memory is not measured here (`bench_cain.py`
measures the model's). Default shapes are `bench_cain.py`'s layer 1 at N = 2,000:
B = 256, d = f = 64, cl = 7, stride 1 (`--stride 4`: its layer 2's).

    python benchmarks/bench_tcn_kernels.py      # -> benchmarks/results/tcn_kernels.json
    python benchmarks/bench_tcn_kernels.py --mode bf16 --out benchmarks/results/tcn_kernels_bf16.json
    python benchmarks/bench_tcn_kernels.py --mode bf16 --stride 4 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--length", type=int, default=2000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--context-length", type=int, default=7)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mode", choices=("xla", "bf16"), default="xla")
    p.add_argument("--out", default=os.path.join(HERE, "results", "tcn_kernels.json"))
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    from _machine import machine
    from keras import ops

    from tfnegseq.layers import TemporalConvolution
    from tfnegseq.provenance import versions

    bf16 = args.mode == "bf16"
    if bf16:
        from tfnegseq.runtime import enable_auto_clustering

        enable_auto_clustering()
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    compute = "bfloat16" if bf16 else "float32"
    b, n, d, cl, stride = (args.batch, args.length, args.dim, args.context_length,
                           args.stride)
    taps = 2 * cl + 1
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(b, n, d)).astype("float32"))
    per_user = tf.Variable(rng.normal(size=(b, taps, d, d)).astype("float32") * 0.05)
    mask = tf.ones((b, n), bool)
    shared = TemporalConvolution(d, cl, stride)
    shared(x, mask)
    per = TemporalConvolution(d, cl, stride, use_kernel=False)
    per(x, mask, filters=per_user)

    n_out = -(-n // stride)
    blocks_q = -(-taps // stride)  # Q: kernel taps per block of `stride` inputs
    blocks_m = n_out + blocks_q - 1  # M: blocks read

    def padded_input(seq):  # cl zeros before, enough after; output j reads [j*s, j*s + 2cl]
        return ops.pad(seq, [[0, 0], [cl, blocks_m * stride], [0, 0]])

    def tap_slices(seq):  # tap k's input for every output, [B, n_out, d]
        padded = padded_input(seq)
        return [padded[:, k: k + (n_out - 1) * stride + 1: stride] for k in range(taps)]

    def tap_sum(seq, kernels):  # [B, N, d], [B, taps, d, f] -> [B, n_out, f]
        out = None
        for k, piece in enumerate(tap_slices(seq)):
            term = ops.matmul(piece, kernels[:, k])
            out = term if out is None else out + term
        return out

    def window(seq, kernels):  # the same, one matmul of the windows side by side
        windows = ops.concatenate(tap_slices(seq), axis=-1)
        return ops.matmul(windows, ops.reshape(kernels, (-1, taps * d, d)))

    def output_taps(seq, kernels):  # the same, one matmul to every tap's output, then a
        # shifted sum. The input in blocks of `stride` slots side by side, [B, M, s d],
        # and the kernel's taps likewise, [B, Q, s d, f] (zero taps past 2cl): output j
        # = sum_q block[j + q] @ W'[q], a stride-1 convolution. z[q, m] = block[m] @
        # W'[q]; output j = sum_q z[q, j + q], read by the skew trick (rows of M read as
        # rows of M + 1: row q then starts q slots later), so no per-tap slice (whose
        # gradient is a full-size pad)
        blocks = ops.reshape(padded_input(seq)[:, : blocks_m * stride],
                             (-1, blocks_m, stride * d))
        wide = ops.pad(kernels, [[0, 0], [0, blocks_q * stride - taps], [0, 0], [0, 0]])
        wide = ops.reshape(wide, (-1, blocks_q, stride * d, d))
        z = ops.matmul(ops.expand_dims(blocks, 1), wide)  # [B, Q, M, f]
        flat = ops.pad(ops.reshape(z, (-1, blocks_q * blocks_m, d)),
                       [[0, 0], [0, blocks_q], [0, 0]])
        skewed = ops.reshape(flat, (-1, blocks_q, blocks_m + 1, d))[:, :, :n_out]
        return ops.sum(skewed, axis=1)

    def output_taps_stacked(seq, kernels):  # the same, the taps' kernels side by side:
        # [B, N', d] @ [B, d, taps f], then [B, N', taps, f] -> [B, taps, N', f]
        padded = ops.pad(seq, [[0, 0], [cl, cl], [0, 0]])
        stacked = ops.reshape(ops.transpose(kernels, (0, 2, 1, 3)), (-1, d, taps * d))
        width = n + 2 * cl
        z = ops.transpose(ops.reshape(ops.matmul(padded, stacked), (-1, width, taps, d)),
                          (0, 2, 1, 3))
        flat = ops.pad(ops.reshape(z, (-1, taps * width, d)), [[0, 0], [0, taps], [0, 0]])
        skewed = ops.reshape(flat, (-1, taps, width + 1, d))[:, :, :n]
        return ops.sum(skewed, axis=1)

    def grouped(seq, kernels):  # the same, the batch as groups of one convolution
        padded = tf.pad(seq, [[0, 0], [cl, cl], [0, 0]])  # [B, N + 2cl, d]
        folded = tf.reshape(tf.transpose(padded, [1, 0, 2]), [1, 1, n + 2 * cl, b * d])
        k = tf.reshape(tf.transpose(kernels, [1, 2, 0, 3]), [1, taps, d, b * d])
        out = tf.nn.conv2d(folded, k, 1, "VALID")  # [1, 1, N, B f], group g = example g
        return tf.transpose(tf.reshape(out, [n, b, d]), [1, 0, 2])

    def cast(v):
        return ops.cast(v, compute)

    forward = {
        "shared_conv": (lambda: shared(cast(x), mask), [x, *shared.trainable_variables]),
        "per_example_window": (lambda: window(cast(x), cast(per_user)), [x, per_user]),
        "per_example_tap_sum": (lambda: tap_sum(cast(x), cast(per_user)), [x, per_user]),
        "per_example_output_taps": (lambda: output_taps(cast(x), cast(per_user)),
                                    [x, per_user]),
    }
    if stride == 1:  # written for stride 1 only
        forward["per_example_output_taps_stacked"] = (
            lambda: output_taps_stacked(cast(x), cast(per_user)), [x, per_user])
    if bf16 and stride == 1:
        forward["per_example_grouped"] = (lambda: grouped(cast(x), cast(per_user)),
                                          [x, per_user])
    layer_out = ops.cast(per(cast(x), mask, filters=cast(per_user)) - ops.cast(per.bias, compute),
                         "float32").numpy()
    for name in [k for k in forward if k.startswith("per_example")]:
        np.testing.assert_allclose(ops.cast(forward[name][0](), "float32").numpy(), layer_out,
                                   atol=0.1 if bf16 else 1e-3, err_msg=name)

    def grad_fn(fn, variables):
        @tf.function(jit_compile=not bf16)
        def step():
            with tf.GradientTape() as tape:
                y = ops.cast(fn(), "float32")
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, variables)
        return step

    steps = {name: grad_fn(fn, v) for name, (fn, v) in forward.items()}
    compile_s = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        compile_s[name] = round(time.perf_counter() - start, 1)
        step()
    rounds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            out = steps[name]()
            out[0].numpy()
            rounds[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds}: "
              + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in rounds.items()), flush=True)

    def ratio(a: str, base: str) -> float:
        return round(statistics.median(
            u / w for u, w in zip(rounds[a], rounds[base], strict=True)), 3)

    result = {
        "benchmark": "tcn_kernels",
        "shapes": {"batch": b, "length": n, "dim": d, "filters": d, "context_length": cl,
                   "stride": stride},
        "mode": ("auto-clustering, mixed_bfloat16" if bf16 else "xla, float32")
                + ", forward + backward (input and kernel gradients)",
        "layer_path": ("per_example_window" if not bf16 and stride == 1
                       else "per_example_output_taps"),
        "rounds": args.rounds,
        "compile_seconds": compile_s,
        "variants": {k: {"ms": round(statistics.median(v) * 1e3, 1),
                         "rounds_ms": [round(t * 1e3, 1) for t in v]}
                     for k, v in rounds.items()},
        "ratios": {"per_example_window/shared_conv": ratio("per_example_window", "shared_conv"),
                   "per_example_tap_sum/shared_conv": ratio("per_example_tap_sum", "shared_conv"),
                   "per_example_window/per_example_tap_sum":
                       ratio("per_example_window", "per_example_tap_sum"),
                   "per_example_output_taps/shared_conv":
                       ratio("per_example_output_taps", "shared_conv"),
                   "per_example_output_taps/per_example_tap_sum":
                       ratio("per_example_output_taps", "per_example_tap_sum"),
                   "per_example_output_taps/per_example_window":
                       ratio("per_example_output_taps", "per_example_window"),
                   **({"per_example_output_taps_stacked/per_example_output_taps":
                           ratio("per_example_output_taps_stacked", "per_example_output_taps")}
                      if stride == 1 else {}),
                   **({"per_example_grouped/shared_conv":
                           ratio("per_example_grouped", "shared_conv"),
                       "per_example_grouped/per_example_tap_sum":
                           ratio("per_example_grouped", "per_example_tap_sum")}
                      if bf16 and stride == 1 else {})},
        "machine": machine(),
        "versions": versions(),
        "command": "python benchmarks/bench_tcn_kernels.py " + " ".join(argv or sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
