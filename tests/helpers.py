"""Shared test helpers: backend-agnostic calls, serialization checks and bf16 emulation.

`eager_call` / `xla_call` run a layer eagerly or XLA-compiled under the current Keras
backend. `to_bf16` rounds float32 values to bfloat16 (round to nearest, ties to even)
and returns them as float32, so a numpy reference can round after every op that a
`mixed_bfloat16` layer computes in bfloat16; `assert_bf16_close` then compares within a
few bfloat16 ulps.
"""

from __future__ import annotations

import json

import keras
import numpy as np

# --------------------------------------------------------------------------------------
# Calls and conversions.


def eager_call(layer, *args, **kwargs):
    return layer(*args, **kwargs)


def xla_call(layer, *args, **kwargs):
    """Calls `layer` inside an XLA-compiled function of the current backend.

    Under JAX this is `jax.jit` over `stateless_call`, which calls `layer.call`
    directly: the float inputs are first cast as `Layer.__call__` would (to bfloat16
    under `mixed_bfloat16`), or a mixed-precision layer would compute in float32.
    """
    if keras.backend.backend() == "jax":
        import jax

        def convert(x):
            return layer.dtype_policy.convert_input(x, layer.autocast, layer.input_dtype)

        def fn(trainable, non_trainable, *inputs):
            inputs, call_kwargs = keras.tree.map_structure(convert, (inputs, kwargs))
            outputs, _ = layer.stateless_call(trainable, non_trainable, *inputs, **call_kwargs)
            return outputs

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        return jax.jit(fn)(trainable, non_trainable, *args)
    import tensorflow as tf

    return tf.function(lambda *inputs: layer(*inputs, **kwargs), jit_compile=True)(*args)


def to_numpy(outputs):
    return keras.tree.map_structure(lambda x: keras.ops.convert_to_numpy(x), outputs)


# --------------------------------------------------------------------------------------
# Serialization.


def assert_config_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(layer)
    assert json.dumps(keras.saving.serialize_keras_object(restored), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )
    assert config["registered_name"].startswith("tfnegseq>")


def assert_save_load_equal(layer, inputs, tmp_path, input_dtypes):
    """Wraps `layer` in a functional model, saves `.keras`, loads, compares outputs."""
    symbolic = [
        keras.Input(shape=x.shape[1:], dtype=dtype, batch_size=None)
        for x, dtype in zip(inputs, input_dtypes, strict=True)
    ]
    model = keras.Model(symbolic, layer(*symbolic))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected, actual = to_numpy(model(inputs)), to_numpy(loaded(inputs))
    for want, got in zip(keras.tree.flatten(expected), keras.tree.flatten(actual), strict=True):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------
# bfloat16 emulation.

BF16_EPS = 2.0**-7  # spacing of bfloat16 values in [1, 2): 8 significant bits


def to_bf16(x):
    """Rounds to the nearest bfloat16 (ties to even); returns float32 (exact bf16 values).

    bfloat16 is the upper half of a float32, so rounding adds `0x7FFF` plus the lowest
    kept bit (the tie-breaker towards an even mantissa) to the bit pattern and clears
    the lower 16 bits. A carry out of the mantissa bumps the exponent, which is the
    correct rounding, up to infinity past the largest bfloat16. NaN stays NaN (its
    payload is forced non-zero so the truncation cannot turn it into infinity).
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)  # uint64: no wrap-around on the add
    lsb = (bits >> 16) & 1
    rounded = (((bits + 0x7FFF + lsb) >> 16) << 16).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out).astype(np.float32)


def bf16_matmul(a, b):
    """`a @ b` as a bfloat16 matmul computes it: bf16 operands (`a`, `b` must already
    hold bf16 values), a float32-or-better accumulation, one rounding of the result."""
    return to_bf16((np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.float32))


def bf16_ulp(x):
    """The spacing of bfloat16 values at `|x|` (at least that of the smallest normal)."""
    x = np.abs(np.asarray(x, dtype=np.float32))
    tiny = np.finfo(np.float32).tiny  # bfloat16 has float32's exponent range
    exponent = np.floor(np.log2(np.maximum(x, tiny)))
    return (2.0**exponent * BF16_EPS).astype(np.float32)


def assert_bf16_close(actual, expected, ulps=2, scale=None):
    """`|actual - expected| <= ulps * bf16_ulp(max(|expected|, |scale|))` elementwise.

    `scale` is the magnitude the error is measured against where the result is a sum
    with cancellation (e.g. `h + update`: a 1-ulp change of `update` is up to one ulp
    of `|update|`, however small `h + update` is). Defaults to `expected`.
    """
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    magnitude = np.abs(expected) if scale is None else np.maximum(np.abs(expected), scale)
    bound = ulps * bf16_ulp(magnitude)
    error = np.abs(actual.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(error / bound), error.shape)
    assert (error <= bound).all(), (
        f"{int((error > bound).sum())} of {error.size} values differ by more than "
        f"{ulps} bf16 ulps; worst at {worst}: actual={actual[worst]!r}, "
        f"expected={expected[worst]!r}, error={error[worst]:.3g} "
        f"({error[worst] / bf16_ulp(magnitude[worst]):.2f} ulps)"
    )


# --------------------------------------------------------------------------------------
# A script under the JAX backend.


def run_under_jax(script: str, *args: str, timeout: int = 600):
    """Runs `python -c script *args` from the repository root under `KERAS_BACKEND=jax`
    on the CPU (TensorFlow logs quiet) and asserts it exits 0 (its output tails in the
    message); returns the `subprocess.CompletedProcess`."""
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env.update({
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")])),
    })
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result
