"""TensorFlow execution settings for training (TensorFlow-specific, like the input and
export modules; layers and models never import this): XLA auto-clustering
(`train.auto_clustering`, below) and deterministic ops (`train.deterministic_ops`,
`op_determinism`).

`enable_auto_clustering()` is the `train.auto_clustering` mode: the training step is a
plain `tf.function` (Keras `jit_compile=False`) in which TensorFlow's XLA auto-clustering
compiles every op except the matmuls into fused XLA kernels, while `MatMul` /
`BatchMatMulV2` stay TensorFlow ops and run on oneDNN. Under `mixed_bfloat16`, oneDNN
runs those bf16 matmuls on AMX where the CPU has it (XLA:CPU in TensorFlow 2.21 does not),
and the elementwise work between them is still fused, with bf16 activations halving its
memory traffic. On the 2-core AMX Xeon of `benchmarks/results/train_throughput.json` this
is the fastest way to train DIN + TAPF; on a CPU without AMX, full XLA
(`jit_compile: true`) is likely the better choice. Numerics are those of the same ops
(XLA fusions and oneDNN matmuls), not bit-identical to full XLA.

TensorFlow reads `TF_XLA_FLAGS` once, the first time a function goes through its XLA
passes, so this must run before the process's first `tf.function` or `tf.data` pipeline
is built: `tfnegseq.train` calls it first thing when the config asks for it. The
clustering level itself (`tf.config.optimizer.set_jit`) is re-read whenever a function is
instantiated.
"""

from __future__ import annotations

import contextlib
import os

# Ops XLA may cluster: all point-wise, reduction and similar fusible ops, plus the
# gathers, segment sums, scatters and cumulative sums of the embedding lookups and the
# mixed-sequence builder. Not MatMul / BatchMatMulV2.
CLUSTER_OPS = (
    "FUSIBLE",
    "GatherV2",
    "ResourceGather",
    "UnsortedSegmentSum",
    "ScatterNd",
    "Cumsum",
    "ConcatV2",
)
_FLAGS = {
    "--tf_xla_cpu_global_jit": None,  # auto-clustering on CPU at all
    "--tf_xla_ops_to_cluster": ",".join(CLUSTER_OPS),
    "--tf_xla_min_cluster_size": "1",  # also single ops left between two matmuls
}


def auto_clustering_flags(existing: str = "") -> str:
    """`existing` TF_XLA_FLAGS with the auto-clustering flags set (others kept)."""
    kept = [f for f in existing.split() if f.split("=", 1)[0] not in _FLAGS]
    ours = [k if v is None else f"{k}={v}" for k, v in _FLAGS.items()]
    return " ".join(kept + ours)


def _set_flags() -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "train.auto_clustering is a TensorFlow setting; the Keras backend is "
            f"{keras.backend.backend()!r}"
        )
    # First: even `tf.config.optimizer.get_jit()` makes TensorFlow read its XLA flags.
    os.environ["TF_XLA_FLAGS"] = auto_clustering_flags(os.environ.get("TF_XLA_FLAGS", ""))


def enable_auto_clustering() -> None:
    """Sets the flags above and turns TensorFlow's XLA auto-clustering on (process-wide)."""
    _set_flags()
    import tensorflow as tf

    tf.config.optimizer.set_jit("autoclustering")


@contextlib.contextmanager
def auto_clustering(enabled: bool = True):
    """`enable_auto_clustering()` for the block, then the previous clustering level
    (nothing at all when `enabled` is false)."""
    if not enabled:
        yield
        return
    _set_flags()
    import tensorflow as tf

    previous = tf.config.optimizer.get_jit()
    tf.config.optimizer.set_jit("autoclustering")
    try:
        yield
    finally:
        tf.config.optimizer.set_jit(previous or False)


@contextlib.contextmanager
def op_determinism(enabled: bool = True):
    """`train.deterministic_ops`: every op runs its deterministic implementation for
    the block (TensorFlow's `enable_op_determinism`), so a run repeats bit for bit
    given its seed and, with `train.deterministic_input`, its batch order. Without it,
    some multi-threaded CPU kernels may add floats in a different order from run to
    run (which ones was not traced): a tiny SINE run with the batch order fixed gave
    test AUC 0.4472 / 0.4444 / 0.4472 in three tries on a loaded 2-core machine, and
    the same value three times with this on.

    TensorFlow only; under JAX, CPU ops are already deterministic and a GPU needs
    `XLA_FLAGS=--xla_gpu_deterministic_ops=true` set before the process starts, which
    is checked here. The previous state is restored after the block (nothing at all
    happens when `enabled` is false).
    """
    if not enabled:
        yield
        return
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        flag = "--xla_gpu_deterministic_ops=true"
        if any(d.platform == "gpu" for d in jax.devices()) and flag not in os.environ.get(
                "XLA_FLAGS", ""):
            raise RuntimeError(f"train.deterministic_ops under JAX on a GPU: start the "
                               f"process with XLA_FLAGS={flag}")
        yield
        return
    if backend != "tensorflow":
        raise RuntimeError(f"train.deterministic_ops: not supported on the {backend!r} backend")
    import tensorflow as tf

    # TensorFlow's public API can only turn determinism on; its state and the way back
    # are in this module (tests/test_runtime.py checks both exist)
    from tensorflow.python.framework import config as tf_config

    previous = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not previous:
            tf_config.disable_op_determinism()
